//! Group commit: concurrent seat changes share one transaction.
//!
//! Grants, heartbeat renewals and releases each queue in a [`Batcher`]. A
//! few workers each take everything queued (up to a limit) and hand it to
//! the storage as one batch, which applies it in one transaction. Under
//! light load a request goes alone and at once; under heavy load batches
//! grow while one is in flight, so the transactions per second stay where
//! the database is fast and a request does not cost a transaction of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};

use chrono::{DateTime, Utc};

use crate::domain::seats::{Grant, GrantRequest, LeaseRef, Renewal, SeatError};
use crate::storage::{RenewItem, Storage, StorageError};

/// Grant (and release) batches in flight at once per instance. One: while it
/// runs the next batch fills, and fewer, larger transactions are what the
/// database does fastest (measured: 1 beat 2, 4 and 8 workers by 20-150%
/// with three instances; docs/benchmarks.md).
const SEAT_WORKERS: usize = 1;
/// Renewal batches in flight at once (most heartbeats need no write, but a
/// burst of them can: after a failover every lease is new to its instance).
const RENEW_WORKERS: usize = 4;
/// Background extensions (nobody waits for them): one modest batch at a
/// time, so they never crowd the database that waiting requests need.
const REFRESH_WORKERS: usize = 1;
const MAX_REFRESH_LEASES: usize = 200;
/// Leases renewed by one transaction at most.
pub const MAX_BATCH_LEASES: usize = 4000;
/// Grants or releases in one transaction at most.
pub const MAX_BATCH_SEATS: usize = 256;
/// Requests waiting at most; past it, senders wait (back-pressure).
const QUEUE: usize = 65_536;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Run<I, O> = Arc<dyn Fn(Vec<I>) -> BoxFuture<Vec<O>> + Send + Sync>;
type Job<I, O> = (I, oneshot::Sender<O>);
type Queue<I, O> = Arc<Mutex<mpsc::Receiver<Job<I, O>>>>;

/// A queue whose workers apply what is queued in batches.
pub struct Batcher<I, O> {
    queue: mpsc::Sender<Job<I, O>>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts `workers` workers on the current Tokio runtime; they stop when
    /// the batcher is dropped. `run` answers a batch with one output per item,
    /// in order; `weight` counts an item against `max_weight`.
    fn start(workers: usize, max_weight: usize, weight: fn(&I) -> usize, run: Run<I, O>) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let rx: Queue<I, O> = Arc::new(Mutex::new(rx));
        for _ in 0..workers {
            let (rx, run) = (rx.clone(), run.clone());
            tokio::spawn(async move {
                while let Some(jobs) = next_batch(&rx, max_weight, weight).await {
                    let (items, replies): (Vec<I>, Vec<_>) = jobs.into_iter().unzip();
                    for (reply, out) in replies.into_iter().zip(run(items).await) {
                        let _ = reply.send(out);
                    }
                }
            });
        }
        Batcher { queue }
    }

    /// Queues `item` and waits for its batch's answer.
    async fn submit(&self, item: I) -> Result<O, String> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((item, reply))
            .await
            .map_err(|_| "the queue is closed (shutting down)".to_string())?;
        answer
            .await
            .map_err(|_| "the request was dropped (shutting down)".to_string())
    }
}

/// Takes the first queued job (waiting for it), then whatever else is queued.
async fn next_batch<I, O>(
    rx: &Mutex<mpsc::Receiver<Job<I, O>>>,
    max_weight: usize,
    weight: fn(&I) -> usize,
) -> Option<Vec<Job<I, O>>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut total = weight(&first.0);
    let mut jobs = vec![first];
    while total < max_weight {
        match rx.try_recv() {
            Ok(job) => {
                total += weight(&job.0);
                jobs.push(job);
            }
            Err(_) => break,
        }
    }
    Some(jobs)
}

/// The same error for every item of a failed batch.
fn each<T>(n: usize, e: &StorageError, what: &str) -> Vec<Result<T, String>> {
    let msg = e.to_string();
    tracing::warn!(error = %msg, requests = n, "batched {what} failed");
    (0..n).map(|_| Err(msg.clone())).collect()
}

/// A queue of renewals in front of [`Storage::renew_batch`].
fn renewal_batcher(
    storage: Arc<dyn Storage>,
    ttl: Duration,
    workers: usize,
    max_leases: usize,
) -> Batcher<RenewItem, Result<Vec<Renewal>, String>> {
    Batcher::start(
        workers,
        max_leases,
        |item: &RenewItem| item.leases.len(),
        Arc::new(move |items: Vec<RenewItem>| {
            let st = storage.clone();
            Box::pin(async move {
                match st.renew_batch(&items, ttl).await {
                    Ok(r) => r.into_iter().map(Ok).collect(),
                    Err(e) => each(items.len(), &e, "renewal"),
                }
            })
        }),
    )
}

/// When a release ended its lease (database clock); None when it was not live.
type Released = Result<Option<DateTime<Utc>>, String>;

/// Group commit of grants, renewals and releases in front of a [`Storage`].
pub struct SeatBatchers {
    grants: Batcher<GrantRequest, Result<Grant, SeatError>>,
    renewals: Batcher<RenewItem, Result<Vec<Renewal>, String>>,
    refreshes: Batcher<RenewItem, Result<Vec<Renewal>, String>>,
    releases: Batcher<(String, LeaseRef), Released>,
}

impl SeatBatchers {
    /// Starts the workers; renewals extend leases by `ttl`.
    pub fn start(storage: Arc<dyn Storage>, ttl: Duration) -> Self {
        let st = storage.clone();
        let grants = Batcher::start(
            SEAT_WORKERS,
            MAX_BATCH_SEATS,
            |_| 1,
            Arc::new(move |reqs: Vec<GrantRequest>| {
                let st = st.clone();
                Box::pin(async move { st.grant_batch(&reqs).await })
            }),
        );
        let renewals = renewal_batcher(storage.clone(), ttl, RENEW_WORKERS, MAX_BATCH_LEASES);
        let refreshes = renewal_batcher(storage.clone(), ttl, REFRESH_WORKERS, MAX_REFRESH_LEASES);
        let st = storage;
        let releases = Batcher::start(
            SEAT_WORKERS,
            MAX_BATCH_SEATS,
            |_| 1,
            Arc::new(move |items: Vec<(String, LeaseRef)>| {
                let st = st.clone();
                Box::pin(async move {
                    match st.release_batch(&items).await {
                        Ok(r) => r.into_iter().map(Ok).collect(),
                        Err(e) => each(items.len(), &e, "release"),
                    }
                })
            }),
        );
        SeatBatchers {
            grants,
            renewals,
            refreshes,
            releases,
        }
    }

    /// Grants one seat, in whatever batch is next.
    pub async fn grant(&self, req: GrantRequest) -> Result<Grant, SeatError> {
        self.grants
            .submit(req)
            .await
            .map_err(|e| SeatError::Storage(StorageError::Conflict(e)))?
    }

    /// Renews `leases` of `holder`, in whatever batch is next.
    pub async fn renew(&self, holder: &str, leases: &[LeaseRef]) -> Result<Vec<Renewal>, String> {
        let item = RenewItem {
            holder: holder.to_string(),
            leases: leases.to_vec(),
        };
        self.renewals.submit(item).await?
    }

    /// Extends `leases` of `holder` where no request waits for it: in the
    /// background queue, one small batch at a time.
    pub async fn refresh(&self, holder: &str, leases: &[LeaseRef]) -> Result<Vec<Renewal>, String> {
        let item = RenewItem {
            holder: holder.to_string(),
            leases: leases.to_vec(),
        };
        self.refreshes.submit(item).await?
    }

    /// Releases `holder`'s `lease`, in whatever batch is next; the database
    /// time it ended, or None when it was not live.
    pub async fn release(&self, holder: &str, lease: LeaseRef) -> Released {
        self.releases.submit((holder.to_string(), lease)).await?
    }
}
