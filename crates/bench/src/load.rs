//! Load loops (closed and paced), bounded in count and time, and their
//! latency statistics.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one scenario measured.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub first_error: Option<String>,
}

impl Stats {
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn from(mut lat_us: Vec<u32>, errors: u64, seconds: f64, first_error: Option<String>) -> Stats {
        lat_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            if lat_us.is_empty() {
                return 0.0;
            }
            let i = ((lat_us.len() as f64 - 1.0) * p).round() as usize;
            lat_us[i] as f64 / 1000.0
        };
        Stats {
            ops: lat_us.len() as u64,
            errors,
            seconds,
            p50_ms: pct(0.50),
            p95_ms: pct(0.95),
            p99_ms: pct(0.99),
            max_ms: lat_us.last().map_or(0.0, |m| *m as f64 / 1000.0),
            first_error,
        }
    }
}

#[derive(Default)]
struct Sink {
    lat_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl Sink {
    fn record(&mut self, took: Duration, result: Result<(), String>) {
        match result {
            Ok(()) => self
                .lat_us
                .push(took.as_micros().min(u32::MAX as u128) as u32),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// `workers` tasks each run `op(worker, n)` back to back until `duration`
/// has passed or `max_ops` operations were started in all.
pub async fn closed_loop<F, Fut>(workers: usize, duration: Duration, max_ops: u64, op: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let started = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (op, started) = (op.clone(), started.clone());
        set.spawn(async move {
            let mut sink = Sink::default();
            loop {
                let n = started.fetch_add(1, Ordering::Relaxed);
                if n >= max_ops || t0.elapsed() >= duration {
                    break;
                }
                let t = Instant::now();
                let r = op(w, n).await;
                sink.record(t.elapsed(), r);
            }
            sink
        });
    }
    let mut all = Sink::default();
    while let Some(s) = set.join_next().await {
        let s = s.expect("load worker panicked");
        all.lat_us.extend(s.lat_us);
        all.errors += s.errors;
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
    }
    Stats::from(
        all.lat_us,
        all.errors,
        t0.elapsed().as_secs_f64(),
        all.first_error,
    )
}

/// Starts `op(n)` at a fixed `rate` per second for `duration` (open loop),
/// at most `cap` in flight. Latency counts from the scheduled start, so a
/// server that falls behind shows it (no coordinated omission).
pub async fn paced<F, Fut>(rate: f64, duration: Duration, cap: usize, op: F) -> Stats
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let sink = Arc::new(Mutex::new(Sink::default()));
    let permits = Arc::new(tokio::sync::Semaphore::new(cap));
    let t0 = Instant::now();
    let total = (rate * duration.as_secs_f64()).ceil() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        let due = t0 + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = permits.clone().acquire_owned().await.expect("open");
        let (op, sink) = (op.clone(), sink.clone());
        tasks.spawn(async move {
            let r = op(n).await;
            sink.lock().expect("lock").record(due.elapsed(), r);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let s = std::mem::take(&mut *sink.lock().expect("lock"));
    Stats::from(
        s.lat_us,
        s.errors,
        t0.elapsed().as_secs_f64(),
        s.first_error,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = Stats::from((1..=100).map(|i| i * 1000).collect(), 2, 2.0, None);
        assert_eq!((s.ops, s.errors), (100, 2));
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (51.0, 99.0, 100.0));
        assert_eq!(s.per_second(), 50.0);
    }

    #[tokio::test]
    async fn closed_loop_stops_at_the_count() {
        let s = closed_loop(4, Duration::from_secs(10), 100, |_, _| async { Ok(()) }).await;
        assert_eq!(s.ops, 100);
    }
}
