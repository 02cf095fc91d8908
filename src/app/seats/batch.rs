//! Group commit: concurrent seat changes share one transaction, concurrent
//! heartbeat checks share one read.
//!
//! Grants, checks, extensions and releases each queue in a [`Batcher`]. A
//! few workers each take everything queued (up to a limit) and hand it to
//! the storage as one batch, which applies it in one transaction (or reads
//! it in one statement). Under light load a request goes alone and at once;
//! under heavy load batches grow while one is in flight, so the statements
//! per second stay where the database is fast and a request does not cost a
//! round trip of its own.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};

use chrono::{DateTime, Utc};

use crate::dbgate::DbGate;
use crate::domain::seats::{Check, Grant, GrantRequest, LeaseRef};
use crate::metrics::{BatchKind, DbCall, Metrics};
use crate::storage::{Extension, RenewItem, SeatFailure, Storage, StorageError};

/// Grant (and release) batches in flight at once per instance. One: while it
/// runs the next batch fills, and fewer, larger transactions are what the
/// database does fastest (measured: 1 beat 2, 4 and 8 workers by 20-150%
/// with three instances; docs/benchmarks.md).
const SEAT_WORKERS: usize = 1;
/// Check reads in flight at once. One: every heartbeat waits for one, and
/// while it runs the next fills, so each statement answers more heartbeats
/// (measured on 2026-12-08 against two: heartbeats +20% through NGINX on
/// three instances, +7-45% on one, lower p99 in every round;
/// docs/benchmarks.md). The reads take no locks; one held up by the
/// database gives up after [`CHECK_TIMEOUT`].
const CHECK_WORKERS: usize = 1;
/// How long a check read may take before its heartbeats are answered
/// `unavailable` and the worker moves on: far above any read measured under
/// load (at most 0.25 s in the bench), and at least as long as a client
/// waits (the library's shortest wait is 1.5 s; NGINX's 1 s). A read held
/// up (a table lock, a connection to a database host that vanished) would
/// otherwise hold every heartbeat of the instance behind it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Extensions a heartbeat waits for (its lease is nearly out).
const EXTEND_WORKERS: usize = 2;
/// Background extensions (nobody waits for them): one modest batch at a
/// time, so they never crowd the database that waiting requests need.
const REFRESH_WORKERS: usize = 1;
const MAX_REFRESH_LEASES: usize = 200;
/// Leases checked or extended by one batch at most.
pub const MAX_BATCH_LEASES: usize = 4000;
/// Grants or releases in one transaction at most.
pub const MAX_BATCH_SEATS: usize = 256;
/// Times a worker yields before taking what is queued.
const YIELDS: usize = 2;
/// Requests waiting at most; past it, senders wait (back-pressure).
const QUEUE: usize = 65_536;
/// Leases extended in the background at most at once per instance; past it,
/// the next heartbeat of a lease tries again.
const MAX_REFRESHING: usize = 50_000;

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
    // Let the requests already being decoded on other threads join this
    // batch: one statement for many of them is what the database does
    // fastest (a yield costs microseconds, not a timer tick).
    for _ in 0..YIELDS {
        tokio::task::yield_now().await;
    }
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

/// A check read that did not answer within [`CHECK_TIMEOUT`]: an outage
/// (the database gate closes, and requests fail fast until it answers).
fn check_timed_out() -> StorageError {
    StorageError::timed_out(format!(
        "a lease check read did not answer within {} s",
        CHECK_TIMEOUT.as_secs()
    ))
}

/// The same error for every item of a failed batch.
fn each<T>(n: usize, e: &StorageError, what: &str) -> Vec<Result<T, String>> {
    let msg = e.to_string();
    tracing::warn!(error = %msg, requests = n, "batched {what} failed");
    (0..n).map(|_| Err(msg.clone())).collect()
}

fn lease_count(item: &RenewItem) -> usize {
    item.leases.len()
}

/// What an extension did to each lease.
type Extended = Result<Vec<Extension>, String>;

/// A queue of extensions in front of [`Storage::extend_batch`].
#[allow(clippy::too_many_arguments)]
fn extension_batcher(
    storage: Arc<dyn Storage>,
    gate: Arc<DbGate>,
    hold: Duration,
    promise: Duration,
    workers: usize,
    max_leases: usize,
    metrics: Arc<Metrics>,
    kind: BatchKind,
) -> Batcher<RenewItem, Extended> {
    Batcher::start(
        workers,
        max_leases,
        lease_count,
        Arc::new(move |items: Vec<RenewItem>| {
            let (st, gate, m) = (storage.clone(), gate.clone(), metrics.clone());
            Box::pin(async move {
                m.batch(kind, items.len());
                let r = m
                    .timed(DbCall::ExtendBatch, st.extend_batch(&items, hold, promise))
                    .await;
                observe_extension(&gate, &r);
                match r {
                    Ok(r) => r.into_iter().map(Ok).collect(),
                    // One lease's row may be locked by a stalled instance:
                    // extend each heartbeat's leases on their own, so only
                    // that heartbeat fails.
                    Err(e) if items.len() > 1 && !e.is_outage() => {
                        tracing::debug!(error = %e, "batched lease extension failed; extending each heartbeat's leases alone");
                        let mut out = Vec::with_capacity(items.len());
                        for item in &items {
                            let one = st.extend_batch(std::slice::from_ref(item), hold, promise);
                            let r = m.timed(DbCall::ExtendBatch, one).await;
                            observe_extension(&gate, &r);
                            out.push(match r {
                                Ok(mut v) => Ok(v.pop().unwrap_or_default()),
                                Err(e) => Err(e.to_string()),
                            });
                        }
                        out
                    }
                    Err(e) => each(items.len(), &e, "lease extension"),
                }
            })
        }),
    )
}

/// Records what an extension found: one that extended a lease wrote.
fn observe_extension(gate: &DbGate, r: &Result<Vec<Vec<Extension>>, StorageError>) {
    match r {
        Ok(exts)
            if exts
                .iter()
                .flatten()
                .any(|e| matches!(e, Extension::Extended(_))) =>
        {
            gate.opened()
        }
        Ok(_) => gate.answered(),
        Err(e) => gate.observe_error(e),
    }
}

/// When a release ended its lease (database clock); None when it was not live.
type Released = Result<Option<DateTime<Utc>>, String>;

/// Group commit of grants, checks, extensions and releases in front of a
/// [`Storage`].
pub struct SeatBatchers {
    grants: Batcher<GrantRequest, Result<Grant, SeatFailure>>,
    checks: Batcher<RenewItem, Result<Vec<Check>, String>>,
    extensions: Batcher<RenewItem, Extended>,
    refreshes: Batcher<RenewItem, Extended>,
    releases: Batcher<(String, LeaseRef), Released>,
    /// Leases with a background extension queued, so a lease is queued once.
    refreshing: Arc<std::sync::Mutex<HashSet<LeaseRef>>>,
    /// Whether the database answers; requests fail fast while it does not.
    gate: Arc<DbGate>,
}

impl SeatBatchers {
    /// Starts the workers; extensions hold leases for `hold` and raise their
    /// promise cap to `promise` (this instance's `lease_hold` and `lease_ttl`).
    /// Batch sizes and the time of each database call go to `metrics`.
    pub fn start(
        storage: Arc<dyn Storage>,
        gate: Arc<DbGate>,
        hold: Duration,
        promise: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (st, g, m) = (storage.clone(), gate.clone(), metrics.clone());
        let grants = Batcher::start(
            SEAT_WORKERS,
            MAX_BATCH_SEATS,
            |_| 1,
            Arc::new(move |reqs: Vec<GrantRequest>| {
                let (st, gate, m) = (st.clone(), g.clone(), m.clone());
                Box::pin(async move {
                    m.batch(BatchKind::Grant, reqs.len());
                    let out = m.timed(DbCall::GrantBatch, st.grant_batch(&reqs)).await;
                    // A grant that committed says the database writes; any
                    // other answer from it (no seat, say) that it is there.
                    let failure = out.iter().find_map(|r| match r {
                        Err(SeatFailure::Storage(e)) if e.is_outage() => Some(e),
                        _ => None,
                    });
                    if out.iter().any(|r| r.as_ref().is_ok_and(|g| !g.replayed)) {
                        gate.opened();
                    } else if let Some(e) = failure {
                        gate.observe_error(e);
                    } else {
                        gate.answered();
                    }
                    out
                })
            }),
        );
        let (st, g, m) = (storage.clone(), gate.clone(), metrics.clone());
        let checks = Batcher::start(
            CHECK_WORKERS,
            MAX_BATCH_LEASES,
            lease_count,
            Arc::new(move |items: Vec<RenewItem>| {
                let (st, gate, m) = (st.clone(), g.clone(), m.clone());
                Box::pin(async move {
                    m.batch(BatchKind::Check, items.len());
                    let read = m.timed(DbCall::CheckBatch, st.check_batch(&items));
                    let r = tokio::time::timeout(CHECK_TIMEOUT, read)
                        .await
                        .unwrap_or_else(|_| Err(check_timed_out()));
                    gate.observe(&r);
                    match r {
                        Ok(r) => r.into_iter().map(Ok).collect(),
                        Err(e) => each(items.len(), &e, "lease check"),
                    }
                })
            }),
        );
        let extensions = extension_batcher(
            storage.clone(),
            gate.clone(),
            hold,
            promise,
            EXTEND_WORKERS,
            MAX_BATCH_LEASES,
            metrics.clone(),
            BatchKind::Extend,
        );
        let refreshes = extension_batcher(
            storage.clone(),
            gate.clone(),
            hold,
            promise,
            REFRESH_WORKERS,
            MAX_REFRESH_LEASES,
            metrics.clone(),
            BatchKind::Refresh,
        );
        let (st, g, m) = (storage, gate.clone(), metrics);
        let releases = Batcher::start(
            SEAT_WORKERS,
            MAX_BATCH_SEATS,
            |_| 1,
            Arc::new(move |items: Vec<(String, LeaseRef)>| {
                let (st, gate, m) = (st.clone(), g.clone(), m.clone());
                Box::pin(async move {
                    m.batch(BatchKind::Release, items.len());
                    let out = m
                        .timed(DbCall::ReleaseBatch, st.release_batch(&items))
                        .await;
                    for r in &out {
                        match r {
                            // It ended a lease: a write committed.
                            Ok(Some(_)) => gate.opened(),
                            Ok(None) => gate.answered(),
                            Err(e) => gate.observe_error(e),
                        }
                    }
                    out.into_iter()
                        .map(|r| {
                            r.map_err(|e| {
                                tracing::warn!(error = %e, "release failed");
                                e.to_string()
                            })
                        })
                        .collect()
                })
            }),
        );
        SeatBatchers {
            grants,
            checks,
            extensions,
            refreshes,
            releases,
            refreshing: Arc::default(),
            gate,
        }
    }

    /// Grants one seat, in whatever batch is next.
    ///
    /// Writes (grants, extensions, releases) fail fast while the database is
    /// known to be away, but once queued they are waited for: an answer of
    /// "unavailable" must mean nothing happened, never a release or grant
    /// that commits later.
    pub async fn grant(&self, req: GrantRequest) -> Result<Grant, SeatFailure> {
        self.gate
            .admit()
            .map_err(|e| SeatFailure::Storage(StorageError::Unavailable(e)))?;
        self.grants
            .submit(req)
            .await
            .map_err(|e| SeatFailure::Storage(StorageError::Stopped(e)))?
    }

    /// Reads the rows of `leases` of `holder`, in whatever read is next.
    /// A read: stops waiting as soon as the database is known to be away.
    pub async fn check(&self, holder: &str, leases: &[LeaseRef]) -> Result<Vec<Check>, String> {
        self.gate
            .run(async {
                self.checks
                    .submit(item(holder, leases))
                    .await
                    .and_then(|r| r)
                    .map_err(StorageError::Stopped)
            })
            .await
            .map_err(|e: StorageError| e.to_string())
    }

    /// Extends `leases` of `holder` now, in whatever batch is next.
    pub async fn extend(&self, holder: &str, leases: &[LeaseRef]) -> Extended {
        self.gate
            .admit()
            .map_err(|id| StorageError::Unavailable(id).to_string())?;
        self.extensions.submit(item(holder, leases)).await?
    }

    /// Extends `leases` of `holder` where no request waits for it: in the
    /// background queue, one small batch at a time. A lease already queued
    /// is not queued again; past [`MAX_REFRESHING`] nothing is queued (the
    /// next heartbeat tries again). Returns how many were queued.
    pub fn refresh(self: &Arc<Self>, holder: &str, leases: &[LeaseRef]) -> usize {
        let fresh: Vec<LeaseRef> = {
            let mut set = self.refreshing.lock().expect("lock");
            if set.len() + leases.len() > MAX_REFRESHING {
                return 0;
            }
            leases.iter().copied().filter(|l| set.insert(*l)).collect()
        };
        if fresh.is_empty() {
            return 0;
        }
        let n = fresh.len();
        let this = self.clone();
        let holder = holder.to_string();
        tokio::spawn(async move {
            match this.refreshes.submit(item(&holder, &fresh)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(error = %e, leases = fresh.len(), "background lease extension failed; the next heartbeat retries")
                }
            }
            let mut set = this.refreshing.lock().expect("lock");
            for l in &fresh {
                set.remove(l);
            }
        });
        n
    }

    /// Releases `holder`'s `lease`, in whatever batch is next; the database
    /// time it ended, or None when it was not live.
    pub async fn release(&self, holder: &str, lease: LeaseRef) -> Released {
        self.gate
            .admit()
            .map_err(|id| StorageError::Unavailable(id).to_string())?;
        self.releases.submit((holder.to_string(), lease)).await?
    }
}

fn item(holder: &str, leases: &[LeaseRef]) -> RenewItem {
    RenewItem {
        holder: holder.to_string(),
        leases: leases.to_vec(),
    }
}
