//! A value cached for a short time, fetched by one caller at a time (the
//! others wait for that fetch instead of repeating it).
//!
//! [`Cached::get_refreshing`] also keeps an expensive fetch off the callers'
//! path and bounds what it costs the database: once a fetch took
//! [`SLOW_FETCH`] or more (a count over a large slots table on a busy
//! server), callers get the cached value at once, up to [`STALE_MAX`] old,
//! and a refresh runs in the background when the value is older than
//! [`SLOW_FETCH_SPACING`] times that fetch's duration (or the TTL), one at a
//! time. Fast fetches keep the plain rule: a value past its TTL, or cleared,
//! is fetched again by the next caller, who waits for it.
//! [`Cached::keep_warm`], on a timer, refreshes the value whether or not
//! anyone asks (a fast one every TTL, a slow one every [`WARM_SLOW`]), so
//! that a fetch that became slow while nobody asked (a table that grew, a
//! busy database) is known to be slow before the first caller comes, and a
//! caller after a quiet spell finds a value young enough to be served.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fetch that took this long or longer counts as slow.
pub const SLOW_FETCH: Duration = Duration::from_millis(50);
/// A slow fetch is not repeated within this many times its own duration: the
/// database spends at most about 1/SPACING of one connection on it.
pub const SLOW_FETCH_SPACING: u32 = 10;
/// The oldest value [`Cached::get_refreshing`] serves without waiting: past
/// it (a refresh held up or failing for that long), callers wait for a
/// fetch of their own and get its answer or its error.
pub const STALE_MAX: Duration = Duration::from_secs(30);
/// How often [`Cached::keep_warm`] refreshes a value whose fetch is slow,
/// asked or not: well within [`STALE_MAX`], so that a caller after a quiet
/// spell still finds one to be served at once.
pub const WARM_SLOW: Duration = Duration::from_secs(20);

struct Entry<T> {
    /// When the fetch that produced `value` ended.
    at: Instant,
    epoch: u64,
    /// How long that fetch took.
    took: Duration,
    value: T,
}

type Slot<T> = Arc<Mutex<Option<Entry<T>>>>;

pub struct Cached<T> {
    ttl: Duration,
    /// Bumped by [`Cached::clear`]; a value fetched under an older epoch is stale.
    epoch: AtomicU64,
    slot: Slot<T>,
    /// Held by the one caller (or background refresh) fetching.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

impl<T: Clone> Cached<T> {
    pub fn new(ttl: Duration) -> Self {
        Cached {
            ttl,
            epoch: AtomicU64::new(0),
            slot: Arc::new(Mutex::new(None)),
            fetching: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The cached value if younger than the TTL and not cleared since.
    fn fresh(&self) -> Option<T> {
        let slot = self.slot.lock().expect("cache lock");
        let e = slot.as_ref()?;
        (e.epoch == self.epoch.load(Ordering::Acquire) && e.at.elapsed() < self.ttl)
            .then(|| e.value.clone())
    }

    /// The cached value if younger than the TTL, else `fetch()`'s (cached
    /// when it succeeds).
    pub async fn get<E, F, Fut>(&self, fetch: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some(v) = self.fresh() {
            return Ok(v);
        }
        let _fetching = self.fetching.lock().await;
        // The fetch we may have waited for may have produced what we need.
        if let Some(v) = self.fresh() {
            return Ok(v);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let began = Instant::now();
        let value = fetch().await?;
        store(&self.slot, epoch, began, value.clone());
        Ok(value)
    }

    /// As [`Cached::get`], but once a fetch was slow the callers no longer
    /// wait for the next one (see the module doc): for values that may be
    /// somewhat older under load (seat counts for clients), never for health
    /// (nor anything that reports it, such as a scrape's `database_up`).
    pub async fn get_refreshing<E, F, Fut>(&self, fetch: F) -> Result<T, E>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let spared = {
            let slot = self.slot.lock().expect("cache lock");
            slot.as_ref().and_then(|e| {
                let age = e.at.elapsed();
                let fresh = e.epoch == self.epoch.load(Ordering::Acquire) && age < self.ttl;
                let slow = e.took >= SLOW_FETCH && age < STALE_MAX;
                (fresh || slow).then(|| {
                    let due = !fresh && age >= e.took * SLOW_FETCH_SPACING;
                    (e.value.clone(), due)
                })
            })
        };
        match spared {
            Some((value, due)) => {
                if due {
                    self.refresh_in_background(fetch);
                }
                Ok(value)
            }
            None => self.get(fetch).await,
        }
    }

    /// Refreshes the value in the background when there is none yet or it
    /// is due: a fast one past the TTL, a slow one nearing [`STALE_MAX`]
    /// ([`WARM_SLOW`]; callers asking meanwhile refresh it sooner, see
    /// [`Cached::get_refreshing`]). Called on a timer, it keeps a value
    /// ready for those callers, so none of them waits for a fetch that
    /// turned slow while nobody asked, nor for one past `STALE_MAX` after a
    /// quiet spell. Unasked, a slow fetch costs the database at most its
    /// duration every [`WARM_SLOW`].
    pub fn keep_warm<E, F, Fut>(&self, fetch: F)
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let due = {
            let slot = self.slot.lock().expect("cache lock");
            slot.as_ref().is_none_or(|e| {
                let every = if e.took >= SLOW_FETCH {
                    WARM_SLOW
                } else {
                    self.ttl
                };
                e.at.elapsed() >= every
            })
        };
        if due {
            self.refresh_in_background(fetch);
        }
    }

    /// Runs `fetch` on its own task unless a fetch is running already; its
    /// value is stored when it succeeds (a failure leaves the old value to
    /// age out).
    fn refresh_in_background<E, F, Fut>(&self, fetch: F)
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let Ok(fetching) = self.fetching.clone().try_lock_owned() else {
            return;
        };
        let (slot, epoch) = (self.slot.clone(), self.epoch.load(Ordering::Acquire));
        tokio::spawn(async move {
            let _fetching = fetching;
            let began = Instant::now();
            if let Ok(value) = fetch().await {
                store(&slot, epoch, began, value);
            }
        });
    }

    /// Makes the cached value `by` older (tests of the schedule).
    #[cfg(test)]
    fn age_by(&self, by: Duration) {
        if let Some(e) = self.slot.lock().expect("cache lock").as_mut() {
            e.at -= by;
        }
    }

    /// Marks the value stale (after a change that must show at once). Never
    /// waits, not even for a fetch in flight: that one is stale on arrival.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

fn store<T>(slot: &Slot<T>, epoch: u64, began: Instant, value: T) {
    *slot.lock().expect("cache lock") = Some(Entry {
        at: Instant::now(),
        epoch,
        took: began.elapsed(),
        value,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_fetch_and_the_ttl_expires() {
        let c = Arc::new(Cached::new(Duration::from_millis(200)));
        let fetches = Arc::new(AtomicU32::new(0));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (c, f) = (c.clone(), fetches.clone());
            set.spawn(async move {
                c.get(|| async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, ()>(f.fetch_add(1, Ordering::SeqCst))
                })
                .await
                .unwrap()
            });
        }
        while let Some(v) = set.join_next().await {
            assert_eq!(v.unwrap(), 0);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let v = c.get(|| async { Ok::<_, ()>(99) }).await.unwrap();
        assert_eq!(v, 99);
        assert_eq!(
            c.get(|| async { Err::<u32, _>("not called") }).await,
            Ok(99)
        );
        c.clear();
        assert_eq!(c.get(|| async { Err::<u32, _>("down") }).await, Err("down"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_slow_fetch_callers_never_wait_and_refreshes_are_spaced() {
        let c = Cached::new(Duration::from_millis(10));
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(60)).await;
            Ok::<_, ()>(0)
        };
        // The first fetch is waited for: there is nothing else to give.
        assert_eq!(c.get_refreshing(slow).await, Ok(0));
        // Cleared and past its TTL, but within 10x its 60 ms: served as is,
        // nothing fetched.
        c.clear();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            c.get_refreshing(|| async { Err::<u32, _>("not called") })
                .await,
            Ok(0)
        );
        // After the spacing a caller still gets the old value at once and
        // starts a refresh; callers meanwhile start no second one.
        tokio::time::sleep(Duration::from_millis(650)).await;
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
        let refresh = || async move {
            started_tx.send(()).unwrap();
            release_rx.await.unwrap();
            Ok::<_, &str>(1)
        };
        assert_eq!(c.get_refreshing(refresh).await, Ok(0));
        started.await.unwrap();
        assert_eq!(
            c.get_refreshing(|| async { Err::<u32, _>("not called") })
                .await,
            Ok(0)
        );
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = c
                .get_refreshing(|| async { Err::<u32, _>("not called") })
                .await;
            if v == Ok(1) {
                break;
            }
            assert!(Instant::now() < deadline, "the refresh never landed: {v:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits (bounded) until the cached value is `want`, asking nobody to fetch.
    async fn lands(c: &Cached<u32>, want: u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = c
                .get_refreshing(|| async { Err::<u32, _>("not called") })
                .await;
            if v == Ok(want) {
                return;
            }
            assert!(Instant::now() < deadline, "{want} never landed: {v:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kept_warm_a_fetch_that_turned_slow_is_never_waited_for() {
        let c = Cached::new(Duration::from_millis(10));
        // Nothing cached: the timer fetches, nobody waits.
        c.keep_warm(|| async { Ok::<_, ()>(1) });
        lands(&c, 1).await;
        // Past the TTL: fetched again, and this fetch is slow (the table
        // grew while nobody asked).
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.keep_warm(|| async {
            tokio::time::sleep(Duration::from_millis(60)).await;
            Ok::<_, ()>(2)
        });
        lands(&c, 2).await;
        // Known slow now: a caller past the TTL gets the value at once, and
        // the timer does not fetch again within 10x the 60 ms.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            c.get_refreshing(|| async { Err::<u32, _>("not called") })
                .await,
            Ok(2)
        );
        let early = Arc::new(AtomicU32::new(0));
        let e = early.clone();
        c.keep_warm(move || async move { Err::<u32, _>(e.fetch_add(1, Ordering::SeqCst)) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            early.load(Ordering::SeqCst),
            0,
            "fetched long before WARM_SLOW"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kept_warm_a_slow_value_is_refreshed_before_it_is_too_old_to_serve() {
        let c = Cached::new(Duration::from_secs(1));
        c.keep_warm(|| async {
            tokio::time::sleep(Duration::from_millis(60)).await;
            Ok::<_, ()>(1)
        });
        lands(&c, 1).await;
        let fetched = Arc::new(AtomicU32::new(0));
        let count = |f: Arc<AtomicU32>| {
            move || async move { Ok::<_, ()>(f.fetch_add(1, Ordering::SeqCst) + 2) }
        };
        // Slow, unasked, younger than WARM_SLOW: left alone.
        c.age_by(WARM_SLOW - Duration::from_secs(1));
        c.keep_warm(count(fetched.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fetched.load(Ordering::SeqCst), 0);
        // Past WARM_SLOW, still within STALE_MAX: a caller is served at once,
        // and the timer refreshes it.
        c.age_by(Duration::from_secs(2));
        assert_eq!(
            c.get_refreshing(|| async { Err::<u32, _>("not called") })
                .await,
            Ok(1)
        );
        c.keep_warm(count(fetched.clone()));
        lands(&c, 2).await;
    }

    #[tokio::test]
    async fn a_fast_fetch_is_repeated_after_clear() {
        let c = Cached::new(Duration::from_secs(60));
        assert_eq!(c.get_refreshing(|| async { Ok::<_, ()>(1) }).await, Ok(1));
        c.clear();
        assert_eq!(c.get_refreshing(|| async { Ok::<_, ()>(2) }).await, Ok(2));
    }
}
