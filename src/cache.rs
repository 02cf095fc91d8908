//! A value cached for a short time, fetched by one caller at a time (the
//! others wait for that fetch instead of repeating it).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Cached<T> {
    ttl: Duration,
    /// Bumped by [`Cached::clear`]; a value fetched under an older epoch is stale.
    epoch: AtomicU64,
    slot: tokio::sync::Mutex<Option<(Instant, u64, T)>>,
}

impl<T: Clone> Cached<T> {
    pub fn new(ttl: Duration) -> Self {
        Cached {
            ttl,
            epoch: AtomicU64::new(0),
            slot: tokio::sync::Mutex::new(None),
        }
    }

    /// The cached value if younger than the TTL, else `fetch()`'s (cached
    /// when it succeeds).
    pub async fn get<E, F, Fut>(&self, fetch: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut slot = self.slot.lock().await;
        let epoch = self.epoch.load(Ordering::Acquire);
        if let Some((at, e, v)) = slot.as_ref() {
            if *e == epoch && at.elapsed() < self.ttl {
                return Ok(v.clone());
            }
        }
        let v = fetch().await?;
        *slot = Some((Instant::now(), epoch, v.clone()));
        Ok(v)
    }

    /// Marks the value stale (after a change that must show at once). Never
    /// waits, not even for a fetch in flight: that one is stale on arrival.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
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
}
