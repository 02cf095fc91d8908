//! Fail fast while the database is away.
//!
//! When a database operation fails because the database cannot be reached
//! (connection refused or reset, the pool found no connection in time), the
//! gate closes: client requests are answered "the license server's database
//! is unavailable" at once instead of each waiting out the pool's acquire
//! timeout, which would outlast the client's own request timeout. While
//! closed, one operation every [`PROBE_EVERY`] is let through as a probe; the
//! first success opens the gate again. Each instance also probes the database
//! on a connection of its own every [`PROBE_EVERY`] (`App::watch_database`),
//! so the gate closes about half a second into an outage and opens about half
//! a second after the database is back, with or without client traffic.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::storage::StorageError;

/// While closed, let one operation through this often; the instance's
/// database watch probes this often too.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A probe that takes longer than this counts as an outage (a database that
/// accepts connections but does not answer: stopped, or out of threads).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// What clients hear while the database is away.
pub const UNAVAILABLE: &str = "the license server's database is unavailable; try again shortly";

pub struct DbGate {
    /// Since when the database is away, when the last probe went through,
    /// and why (for the log and healthz).
    closed: Mutex<Option<(Instant, Instant, String)>>,
    /// True while closed, for requests already waiting on the database.
    signal: tokio::sync::watch::Sender<bool>,
}

impl Default for DbGate {
    fn default() -> Self {
        DbGate {
            closed: Mutex::new(None),
            signal: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl DbGate {
    /// Ok when an operation may go to the database now; the reason it is
    /// away otherwise.
    pub fn admit(&self) -> Result<(), String> {
        let mut closed = self.closed.lock().expect("lock");
        match closed.as_mut() {
            None => Ok(()),
            Some((_, probe, why)) => {
                if probe.elapsed() >= PROBE_EVERY {
                    *probe = Instant::now();
                    Ok(())
                } else {
                    Err(why.clone())
                }
            }
        }
    }

    /// Runs the read `op`, unless the gate is closed (then fails at once) or
    /// closes while `op` waits (then stops waiting: a request caught by the
    /// start of an outage hears so within about half a second, not after the
    /// pool's acquire timeout). Only for reads: a write dropped here could
    /// still commit after its caller was told "unavailable".
    pub async fn run<T, E, Fut>(&self, op: Fut) -> Result<T, E>
    where
        Fut: std::future::Future<Output = Result<T, E>>,
        E: From<StorageError>,
    {
        self.admit()
            .map_err(|w| E::from(StorageError::Unavailable(w)))?;
        let mut signal = self.signal.subscribe();
        tokio::select! {
            r = op => Ok(r?),
            _ = signal.wait_for(|closed| *closed) => {
                Err(E::from(StorageError::Unavailable(self.down().unwrap_or_default())))
            }
        }
    }

    /// Records what an operation found: success opens the gate, an outage
    /// closes it; other errors (a constraint, a conflict) say nothing about
    /// reachability.
    pub fn observe<T>(&self, result: &Result<T, StorageError>) {
        match result {
            Ok(_) => self.opened(),
            Err(e) if e.is_outage() => self.failed(&e.to_string()),
            Err(_) => {}
        }
    }

    /// The database answered.
    pub fn opened(&self) {
        let mut closed = self.closed.lock().expect("lock");
        if let Some((since, _, _)) = closed.take() {
            self.signal.send_replace(false);
            tracing::warn!(
                after_s = since.elapsed().as_secs_f64(),
                "the database answers again"
            );
        }
    }

    /// The database could not be reached.
    pub fn failed(&self, why: &str) {
        let mut closed = self.closed.lock().expect("lock");
        match closed.as_mut() {
            Some((_, _, w)) => *w = why.to_string(),
            None => {
                tracing::error!(error = %why, "the database cannot be reached: seat requests are answered 'unavailable' until it answers again");
                let now = Instant::now();
                *closed = Some((now, now, why.to_string()));
                self.signal.send_replace(true);
            }
        }
    }

    /// Why the database is away, if it is.
    pub fn down(&self) -> Option<String> {
        self.closed
            .lock()
            .expect("lock")
            .as_ref()
            .map(|(_, _, w)| w.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_on_an_outage_probes_and_reopens() {
        let g = DbGate::default();
        assert!(g.admit().is_ok());
        g.observe::<()>(&Err(StorageError::Database(sqlx::Error::PoolTimedOut)));
        assert!(g.admit().is_err(), "fails fast right after an outage");
        assert!(g.down().is_some());
        std::thread::sleep(PROBE_EVERY);
        assert!(g.admit().is_ok(), "one probe goes through");
        assert!(g.admit().is_err(), "but only one");
        g.observe(&Ok(()));
        assert!(g.admit().is_ok() && g.down().is_none());
        // A conflict is not an outage.
        g.observe::<()>(&Err(StorageError::Conflict("x".into())));
        assert!(g.admit().is_ok());
    }
}
