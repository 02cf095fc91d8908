//! Virtual seat handles: the lease lives on whatever server answers.

use floatlm_protocol::messages::{Request, Response};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The lease is gone (expired, released by an operator, or unreachable
    /// servers until its deadline): stop using the feature.
    Lost {
        reason: String,
    },
    Released,
}

struct Shared {
    lease: String,
    state: HandleState,
    /// The application must stop using the seat by then (client clock).
    valid_until: Instant,
}

/// One checked-out seat. Dropping it releases the seat (best effort);
/// [`SeatHandle::release`] waits for the server's answer.
pub struct SeatHandle {
    client: Client,
    feature: String,
    shared: Arc<Mutex<Shared>>,
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
        let shared = Arc::new(Mutex::new(Shared {
            lease,
            state: HandleState::Held,
            valid_until: deadline(sent, ttl),
        }));
        let task = tokio::spawn(heartbeat(client.clone(), shared.clone(), ttl));
        SeatHandle {
            client,
            feature,
            shared,
            task,
        }
    }

    pub fn feature(&self) -> &str {
        &self.feature
    }

    /// The server's lease id, `FEATURE.SLOT.GEN`.
    pub fn lease(&self) -> String {
        self.shared.lock().expect("lock").lease.clone()
    }

    pub fn state(&self) -> HandleState {
        let s = self.shared.lock().expect("lock");
        if s.state != HandleState::Released && Instant::now() >= s.valid_until {
            return HandleState::Lost {
                reason: "no heartbeat reached any server before the lease ran out".into(),
            };
        }
        s.state.clone()
    }

    /// Whether the application may use the feature right now.
    pub fn is_valid(&self) -> bool {
        matches!(
            self.state(),
            HandleState::Held | HandleState::Reconnecting { .. }
        )
    }

    /// Releases the seat and waits for the server; true when it was released.
    pub async fn release(self) -> bool {
        self.task.abort();
        let lease = {
            let mut s = self.shared.lock().expect("lock");
            if s.state == HandleState::Released {
                return false;
            }
            s.state = HandleState::Released;
            s.lease.clone()
        };
        matches!(
            self.client.call(&Request::Logout { lease }).await,
            Ok(Response::Released { released: true, .. })
        )
    }
}

impl Drop for SeatHandle {
    fn drop(&mut self) {
        self.task.abort();
        let lease = {
            let mut s = self.shared.lock().expect("lock");
            if s.state == HandleState::Released {
                return;
            }
            s.state = HandleState::Released;
            s.lease.clone()
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            rt.spawn(async move {
                let _ = client.call(&Request::Logout { lease }).await;
            });
        }
    }
}

async fn heartbeat(client: Client, shared: Arc<Mutex<Shared>>, ttl: Duration) {
    let every = ttl.mul_f64(client.inner.options.heartbeat_fraction.clamp(0.05, 0.9));
    let mut wait = every;
    loop {
        tokio::time::sleep(wait).await;
        let lease = shared.lock().expect("lock").lease.clone();
        let sent = Instant::now();
        let result = client
            .call(&Request::Heartbeat {
                leases: vec![lease],
            })
            .await;
        let mut s = shared.lock().expect("lock");
        match result {
            Ok(Response::Heartbeat { leases }) if leases.first().is_some_and(|l| l.alive) => {
                s.valid_until = deadline(sent, Duration::from_millis(leases[0].ttl_ms));
                s.state = HandleState::Held;
                wait = every;
            }
            Ok(_) => {
                s.state = HandleState::Lost {
                    reason:
                        "the server no longer knows this lease (expired or released by an operator)"
                            .into(),
                };
                return;
            }
            Err(e) => {
                if Instant::now() >= s.valid_until {
                    s.state = HandleState::Lost {
                        reason: format!("no server reachable before the lease ran out: {e}"),
                    };
                    return;
                }
                tracing::warn!(error = %e, "heartbeat failed; retrying");
                s.state = HandleState::Reconnecting {
                    last_error: e.to_string(),
                };
                wait = (every / 4).max(Duration::from_millis(100));
            }
        }
    }
}
