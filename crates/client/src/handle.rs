//! Virtual seat handles: the lease lives on whatever server answers.
//!
//! A handle is a promise to the application: the seat is its own until
//! [`SeatHandle::valid_until`]. Every answered heartbeat moves that instant
//! forward; when no server answers before it, or a server says the lease is
//! gone, the promise is broken and the handle says so at once
//! ([`SeatHandle::lost`], [`SeatHandle::on_loss`]), so the application can
//! stop using the feature before the seat is given to someone else.

use floatlm_protocol::messages::{Request, Response};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::client::Client;

/// What a seat handle is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandleState {
    /// The seat is held; the application may use the feature.
    Held,
    /// The last heartbeat failed; retrying through other servers until the
    /// lease's own deadline. The seat is still valid meanwhile.
    Reconnecting {
        last_error: String,
    },
    /// The lease is gone (expired, released by an operator, the identity
    /// revoked or expired, or unreachable servers until its deadline): stop
    /// using the feature.
    Lost {
        reason: String,
    },
    Released,
}

/// Why a handle lost its seat. Either way the application must stop using
/// the feature: the seat may already be someone else's.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossReason {
    /// A server answered that the lease is no longer this client's: an
    /// operator force-released it, or it ran out on the server.
    Revoked,
    /// The server refused the client's identity: an operator revoked it, or
    /// it expired. Its leases are ended; no server will renew them.
    IdentityRefused {
        /// The server's words (who, and since when).
        reason: String,
    },
    /// No server confirmed the lease before the promise ran out. The
    /// servers may be down or unreachable from here; the handle cannot tell
    /// whether the seat still exists, so it stops promising it.
    Unconfirmed {
        /// The last heartbeat's error, when one failed (a heartbeat may also
        /// still have been waiting for its answer).
        last_error: Option<String>,
    },
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossReason::Revoked => f.write_str(
                "the server no longer knows this lease (released by an operator, or expired on the server)",
            ),
            LossReason::IdentityRefused { reason } => {
                write!(f, "the license server refused this client's identity: {reason}")
            }
            LossReason::Unconfirmed { last_error: None } => {
                f.write_str("no server confirmed the lease before its promise ran out")
            }
            LossReason::Unconfirmed {
                last_error: Some(e),
            } => write!(
                f,
                "no server confirmed the lease before its promise ran out (last error: {e})"
            ),
        }
    }
}

type LossCallback = Box<dyn Fn(&str) + Send + Sync + 'static>;

struct Shared {
    lease: String,
    state: HandleState,
    /// The application must stop using the seat by then (client clock).
    valid_until: Instant,
    /// Called once on loss, then dropped; dropped unused on release.
    on_loss: Vec<LossCallback>,
    /// Why the seat was lost, once it was.
    loss: Option<LossReason>,
}

/// What the handle and its heartbeat task share.
struct Core {
    shared: Mutex<Shared>,
    /// `Some` once lost. A watch channel rather than a one-shot: any number
    /// of [`SeatHandle::lost`] futures may wait, before or after the loss.
    lost: watch::Sender<Option<LossReason>>,
}

impl Core {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("lock")
    }

    /// Records the loss and tells everyone waiting, once. False when the
    /// handle was already lost or released.
    fn lose(&self, reason: LossReason) -> bool {
        let callbacks = {
            let mut s = self.lock();
            if matches!(s.state, HandleState::Lost { .. } | HandleState::Released) {
                return false;
            }
            s.state = HandleState::Lost {
                reason: reason.to_string(),
            };
            s.loss = Some(reason.clone());
            // The promise is void from now on, even if it had time left.
            s.valid_until = s.valid_until.min(Instant::now());
            std::mem::take(&mut s.on_loss)
        };
        // Outside the lock: a callback may well look at the handle.
        let message = reason.to_string();
        for f in callbacks {
            f(&message);
        }
        // Waiters wake after the callbacks returned, so that an application
        // using both sees them in one order.
        self.lost.send_replace(Some(reason));
        true
    }

    /// Fires the loss if the promise ran out and the heartbeat task has not
    /// noticed yet (its timer may lag a busy runtime), so that `state()`
    /// and `lost()` never disagree.
    fn expire_if_due(&self) {
        let due = {
            let s = self.lock();
            match &s.state {
                _ if Instant::now() < s.valid_until => None,
                HandleState::Held => Some(None),
                HandleState::Reconnecting { last_error } => Some(Some(last_error.clone())),
                _ => None,
            }
        };
        if let Some(last_error) = due {
            self.lose(LossReason::Unconfirmed { last_error });
        }
    }
}

/// One checked-out seat. Dropping it releases the seat (best effort);
/// [`SeatHandle::release`] waits for the server's answer.
pub struct SeatHandle {
    client: Client,
    feature: String,
    core: Arc<Core>,
    task: tokio::task::JoinHandle<()>,
}

/// Keeps a margin before the server-side expiry, for clock drift and latency.
fn deadline(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl - (ttl / 10).min(Duration::from_secs(2))
}

impl SeatHandle {
    pub(crate) fn start(
        client: Client,
        feature: String,
        lease: String,
        sent: Instant,
        ttl: Duration,
    ) -> SeatHandle {
        let core = Arc::new(Core {
            shared: Mutex::new(Shared {
                lease,
                state: HandleState::Held,
                valid_until: deadline(sent, ttl),
                on_loss: Vec::new(),
                loss: None,
            }),
            lost: watch::Sender::new(None),
        });
        let task = tokio::spawn(heartbeat(client.clone(), core.clone(), sent, ttl));
        SeatHandle {
            client,
            feature,
            core,
            task,
        }
    }

    pub fn feature(&self) -> &str {
        &self.feature
    }

    /// The server's lease id. Treat it as opaque: its shape is the server's.
    pub fn lease(&self) -> String {
        self.core.lock().lease.clone()
    }

    pub fn state(&self) -> HandleState {
        self.core.expire_if_due();
        self.core.lock().state.clone()
    }

    /// Whether the application may use the feature right now.
    pub fn is_valid(&self) -> bool {
        matches!(
            self.state(),
            HandleState::Held | HandleState::Reconnecting { .. }
        )
    }

    /// Until when (client monotonic clock) the application may use the seat.
    ///
    /// It is the send time of the last login or heartbeat a server answered,
    /// plus the lifetime that answer granted, minus a safety margin (a tenth
    /// of it, at most 2 s) for clock drift and latency: the server keeps the
    /// seat at least that long, so using it until then never overlaps
    /// another holder. Each answered heartbeat moves it forward. An
    /// application that must not over-use a seat (one doing work in
    /// batches, say) can check that a batch ends before it instead of
    /// polling [`SeatHandle::state`]. Once the seat is lost it is no later
    /// than the moment of the loss.
    pub fn valid_until(&self) -> Instant {
        self.core.expire_if_due();
        self.core.lock().valid_until
    }

    /// Why the seat was lost, or None while it is held (or was released).
    pub fn loss(&self) -> Option<LossReason> {
        self.core.expire_if_due();
        self.core.lock().loss.clone()
    }

    /// Resolves when the seat is lost: a server said the lease is gone, or
    /// no server confirmed it before [`SeatHandle::valid_until`]. The
    /// heartbeat task fires it at that instant itself, so an application
    /// waiting here learns of the loss when it happens, not when it next
    /// looks at the state. Resolves at once if the seat is already lost;
    /// never while the seat is held; after the [`SeatHandle::on_loss`]
    /// callbacks returned. Cancel-safe: dropping the future only stops
    /// waiting.
    pub async fn lost(&self) -> LossReason {
        let mut rx = self.core.lost.subscribe();
        let reason = rx.wait_for(Option::is_some).await.map(|r| r.clone());
        match reason {
            Ok(Some(reason)) => reason,
            // The sender lives as long as `self`: cannot happen.
            _ => std::future::pending().await,
        }
    }

    /// Calls `f` with a description of the reason when the seat is lost, for
    /// applications that do not wait on futures (a GUI that disables a
    /// feature, say). `f` is called at most once: from the heartbeat task
    /// (a runtime worker thread), so it must return quickly and not block;
    /// at once, on this thread, if the seat is already lost; never once
    /// the handle is released or dropped.
    pub fn on_loss(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        self.core.expire_if_due();
        let mut s = self.core.lock();
        match &s.state {
            HandleState::Lost { reason } => {
                let reason = reason.clone();
                drop(s);
                f(&reason);
            }
            HandleState::Released => {}
            _ => s.on_loss.push(Box::new(f)),
        }
    }

    /// Marks the handle released; the lease to log out, unless it already was.
    fn mark_released(&self) -> Option<String> {
        self.task.abort();
        let mut s = self.core.lock();
        if s.state == HandleState::Released {
            return None;
        }
        s.state = HandleState::Released;
        s.on_loss.clear();
        Some(s.lease.clone())
    }

    /// Releases the seat and waits for the server; true when it was released.
    pub async fn release(self) -> bool {
        matches!(self.give_back().await, Ok(Released::Released))
    }

    /// Releases the seat and says what the server did: released it, or found
    /// it already ended (expired, or released by an operator), or — when the
    /// logout had to be sent more than once — found it ended, perhaps by an
    /// earlier copy whose answer never came; an error when no server
    /// answered (the seat then frees itself when its lease runs out).
    pub async fn give_back(self) -> Result<Released, crate::ClientError> {
        let Some(lease) = self.mark_released() else {
            return Ok(Released::AlreadyEnded);
        };
        let answered = self
            .client
            .call_until(&Request::Logout { lease }, None)
            .await?;
        match answered.response {
            Response::Released { released: true, .. } => Ok(Released::Released),
            Response::Released {
                released: false, ..
            } if answered.sends > 1 => Ok(Released::Resent),
            Response::Released {
                released: false, ..
            } => Ok(Released::AlreadyEnded),
            other => Err(crate::ClientError::Server {
                server: "server".into(),
                message: format!("unexpected answer to a logout: {other:?}"),
            }),
        }
    }
}

impl Drop for SeatHandle {
    fn drop(&mut self) {
        let Some(lease) = self.mark_released() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            rt.spawn(async move {
                let _ = client.call(&Request::Logout { lease }).await;
            });
        }
    }
}

/// What [`SeatHandle::give_back`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The server released the lease: the seat is free now.
    Released,
    /// The lease had already ended (expired, released by an operator, or
    /// this handle was released before).
    AlreadyEnded,
    /// The seat is free, but who freed it cannot be told: the logout went
    /// out more than once (a server was slow or did not answer, so the
    /// client asked another), and the copy that was answered found the
    /// lease ended. An earlier copy, whose answer never came, may have
    /// released it; or it had ended before.
    Resent,
}

/// The shortest heartbeat period, however short a promise.
const MIN_PERIOD: Duration = Duration::from_millis(50);

/// When to send the next heartbeat after an answer to a request sent at
/// `sent` promised `granted`: at `fraction` of the promise, and never later
/// than halfway to the end of what the handle may use (`valid_until`), so
/// that at least half of it is left to ask every server in turn.
fn next_beat(sent: Instant, granted: Duration, fraction: f64, valid_until: Instant) -> Instant {
    let at = sent + granted.mul_f64(fraction).max(MIN_PERIOD);
    let halfway = sent + valid_until.saturating_duration_since(sent) / 2;
    at.min(halfway.max(sent + MIN_PERIOD))
}

/// Renews the lease at a fraction of its promise until it is lost or the
/// handle goes away. Each heartbeat has until the promise ends: the client
/// derives its per-server timeout and hedge delay from the time left
/// ([`crate::client::Timing`]), so a hung server costs one hedge delay, not
/// a timeout. Every wait is raced against the promise's end, so the loss
/// fires on time even while a heartbeat is still waiting for a server.
async fn heartbeat(client: Client, core: Arc<Core>, sent: Instant, ttl: Duration) {
    let fraction = client.inner.options.heartbeat_fraction.clamp(0.05, 0.9);
    let mut every = ttl.mul_f64(fraction).max(MIN_PERIOD);
    let mut next = next_beat(sent, ttl, fraction, core.lock().valid_until);
    let mut last_error: Option<String> = None;
    loop {
        let until = core.lock().valid_until;
        let beat = async {
            tokio::time::sleep_until(next.into()).await;
            let lease = core.lock().lease.clone();
            client
                .call_until(
                    &Request::Heartbeat {
                        leases: vec![lease],
                    },
                    Some(until),
                )
                .await
        };
        let result = tokio::select! {
            // An answer that arrives with the deadline still counts.
            biased;
            r = beat => r,
            _ = tokio::time::sleep_until(until.into()) => {
                core.lose(LossReason::Unconfirmed { last_error });
                return;
            }
        };
        let result = result.map(|a| (a.sent, a.response));
        match result {
            Ok((sent, Response::Heartbeat { leases })) => match leases.first() {
                Some(l) if l.alive => {
                    let granted = Duration::from_millis(l.ttl_ms);
                    let mut s = core.lock();
                    // Lost meanwhile (the deadline passed while the answer
                    // was on its way, and `state()` noticed): a broken
                    // promise stays broken, the application was told.
                    if !matches!(
                        s.state,
                        HandleState::Held | HandleState::Reconnecting { .. }
                    ) {
                        return;
                    }
                    s.valid_until = deadline(sent, granted);
                    s.state = HandleState::Held;
                    // A server may promise less than the first TTL (what is
                    // left of a recorded expiry): renew in proportion to it,
                    // counted from when this heartbeat was sent.
                    every = granted.mul_f64(fraction).max(MIN_PERIOD);
                    next = next_beat(sent, granted, fraction, s.valid_until);
                    last_error = None;
                }
                _ => {
                    core.lose(LossReason::Revoked);
                    return;
                }
            },
            // Revoked or expired: final, however long the promise had left.
            Err(crate::ClientError::IdentityRefused { reason, .. }) => {
                core.lose(LossReason::IdentityRefused { reason });
                return;
            }
            other => {
                let e = match other {
                    Err(e) => e.to_string(),
                    Ok((_, r)) => format!("unexpected answer to a heartbeat: {r:?}"),
                };
                tracing::warn!(error = %e, "heartbeat failed; retrying");
                {
                    let mut s = core.lock();
                    if !matches!(
                        s.state,
                        HandleState::Held | HandleState::Reconnecting { .. }
                    ) {
                        return;
                    }
                    s.state = HandleState::Reconnecting {
                        last_error: e.clone(),
                    };
                }
                last_error = Some(e);
                next = Instant::now() + (every / 4).max(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn core(valid_for: Duration) -> Arc<Core> {
        Arc::new(Core {
            shared: Mutex::new(Shared {
                lease: "f.0.1".into(),
                state: HandleState::Held,
                valid_until: Instant::now() + valid_for,
                on_loss: Vec::new(),
                loss: None,
            }),
            lost: watch::Sender::new(None),
        })
    }

    #[test]
    fn the_margin_is_a_tenth_of_the_ttl_at_most_two_seconds() {
        let t = Instant::now();
        assert_eq!(
            deadline(t, Duration::from_secs(5)),
            t + Duration::from_millis(4500)
        );
        assert_eq!(
            deadline(t, Duration::from_secs(60)),
            t + Duration::from_secs(58)
        );
    }

    #[test]
    fn a_heartbeat_goes_out_at_a_third_of_the_promise_from_its_send_time() {
        let t = Instant::now();
        let ttl = Duration::from_secs(10);
        assert_eq!(
            next_beat(t, ttl, 1.0 / 3.0, deadline(t, ttl)),
            t + ttl.mul_f64(1.0 / 3.0)
        );
        // Half a TTL promised (a lease past half its recorded hold).
        let half = Duration::from_secs(5);
        assert_eq!(
            next_beat(t, half, 1.0 / 3.0, deadline(t, half)),
            t + half.mul_f64(1.0 / 3.0)
        );
    }

    #[test]
    fn a_heartbeat_leaves_at_least_half_of_what_may_be_used() {
        let t = Instant::now();
        let ttl = Duration::from_secs(10);
        // A fraction of 0.9 would beat at the very end of the promise.
        assert_eq!(
            next_beat(t, ttl, 0.9, deadline(t, ttl)),
            t + Duration::from_millis(4500)
        );
        assert_eq!(next_beat(t, Duration::ZERO, 1.0 / 3.0, t), t + MIN_PERIOD);
    }

    #[test]
    fn a_loss_fires_once_voids_the_promise_and_calls_back_outside_the_lock() {
        let c = core(Duration::from_secs(60));
        let calls = Arc::new(AtomicU32::new(0));
        {
            let (calls, c2) = (calls.clone(), c.clone());
            let f: LossCallback = Box::new(move |reason| {
                // Taking the lock here would deadlock if called under it.
                assert!(matches!(c2.lock().state, HandleState::Lost { .. }));
                assert!(reason.contains("operator"), "{reason}");
                calls.fetch_add(1, Ordering::SeqCst);
            });
            c.lock().on_loss.push(f);
        }
        let mut rx = c.lost.subscribe();
        assert!(c.lose(LossReason::Revoked));
        assert!(!c.lose(LossReason::Unconfirmed { last_error: None }));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(*rx.borrow_and_update(), Some(LossReason::Revoked));
        assert!(c.lock().valid_until <= Instant::now());
    }

    #[test]
    fn a_promise_that_ran_out_is_a_loss_even_before_the_task_notices() {
        let c = core(Duration::ZERO);
        c.lock().state = HandleState::Reconnecting {
            last_error: "connection refused".into(),
        };
        c.expire_if_due();
        assert_eq!(
            *c.lost.borrow(),
            Some(LossReason::Unconfirmed {
                last_error: Some("connection refused".into())
            })
        );
    }

    #[test]
    fn a_released_handle_is_never_lost() {
        let c = core(Duration::ZERO);
        c.lock().state = HandleState::Released;
        c.expire_if_due();
        assert!(!c.lose(LossReason::Revoked));
        assert_eq!(*c.lost.borrow(), None);
    }
}
