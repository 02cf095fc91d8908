//! Group commit for heartbeats: concurrent renewals share one transaction.
//!
//! Heartbeats queue here. A few workers each take everything queued (up to
//! [`MAX_BATCH_LEASES`]) and renew it in one transaction. Under light load a
//! heartbeat is renewed at once, alone; under heavy load batches grow while
//! one is in flight, so a heartbeat does not cost a database round trip of
//! its own and the transactions per second stay where the database is fast.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::domain::seats::{LeaseRef, Renewal};
use crate::storage::{RenewItem, Storage};

/// Batches in flight at once (each holds one database connection).
const WORKERS: usize = 4;
/// Leases renewed by one transaction at most.
pub const MAX_BATCH_LEASES: usize = 4000;
/// Heartbeats waiting at most; past it, senders wait (back-pressure).
const QUEUE: usize = 65_536;

type Reply = Result<Vec<Renewal>, String>;

struct Job {
    item: RenewItem,
    reply: oneshot::Sender<Reply>,
}

/// The queue in front of [`Storage::renew_batch`].
pub struct RenewBatcher {
    queue: mpsc::Sender<Job>,
}

impl RenewBatcher {
    /// Starts the workers on the current Tokio runtime; they stop when the
    /// batcher is dropped.
    pub fn start(storage: Arc<dyn Storage>, ttl: Duration) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WORKERS {
            tokio::spawn(worker(storage.clone(), rx.clone(), ttl));
        }
        RenewBatcher { queue }
    }

    /// Renews `leases` of `holder`, in whatever batch is next.
    pub async fn renew(&self, holder: &str, leases: &[LeaseRef]) -> Reply {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            item: RenewItem {
                holder: holder.to_string(),
                leases: leases.to_vec(),
            },
            reply,
        };
        self.queue
            .send(job)
            .await
            .map_err(|_| "the renewal queue is closed (shutting down)".to_string())?;
        answer
            .await
            .map_err(|_| "the renewal was dropped (shutting down)".to_string())?
    }
}

/// Takes the first queued job (waiting for it), then whatever else is queued.
async fn next_batch(rx: &Mutex<mpsc::Receiver<Job>>) -> Option<Vec<Job>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut leases = first.item.leases.len();
    let mut jobs = vec![first];
    while leases < MAX_BATCH_LEASES {
        match rx.try_recv() {
            Ok(job) => {
                leases += job.item.leases.len();
                jobs.push(job);
            }
            Err(_) => break,
        }
    }
    Some(jobs)
}

async fn worker(storage: Arc<dyn Storage>, rx: Arc<Mutex<mpsc::Receiver<Job>>>, ttl: Duration) {
    while let Some(jobs) = next_batch(&rx).await {
        let (items, replies): (Vec<RenewItem>, Vec<_>) =
            jobs.into_iter().map(|j| (j.item, j.reply)).unzip();
        match storage.renew_batch(&items, ttl).await {
            Ok(results) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(r));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(error = %msg, heartbeats = items.len(), "batched renewal failed");
                for reply in replies {
                    let _ = reply.send(Err(msg.clone()));
                }
            }
        }
    }
}
