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
//!
//! An outage is one [`Incident`]: logged with its cause when the gate closes;
//! every request failed fast meanwhile answers with that incident's id.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::incident::Incident;
use crate::storage::StorageError;

/// While closed, let one operation through this often; the instance's
/// database watch probes this often too.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A probe that takes longer than this counts as an outage (a database that
/// accepts connections but does not answer: stopped, or out of threads).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// What clients hear while the database is away.
pub const UNAVAILABLE: &str = "the license server's database is unavailable; try again shortly";

/// An outage as the gate knows it.
struct Closed {
    since: Instant,
    /// When the last probe went through.
    probe: Instant,
    /// Why (the latest failure's detail: for the log only).
    why: String,
    /// Logged with `why` when the gate closed; what requests are told.
    incident: Incident,
}

pub struct DbGate {
    closed: Mutex<Option<Closed>>,
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
    /// Ok when an operation may go to the database now; the outage's
    /// incident id otherwise.
    pub fn admit(&self) -> Result<(), String> {
        let mut closed = self.closed.lock().expect("lock");
        match closed.as_mut() {
            None => Ok(()),
            Some(c) => {
                if c.probe.elapsed() >= PROBE_EVERY {
                    c.probe = Instant::now();
                    Ok(())
                } else {
                    Err(c.incident.id().to_string())
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
                let id = self.incident().map(|i| i.id().to_string()).unwrap_or_default();
                Err(E::from(StorageError::Unavailable(id)))
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
        if let Some(c) = closed.take() {
            self.signal.send_replace(false);
            tracing::warn!(
                after_s = c.since.elapsed().as_secs_f64(),
                incident = %c.incident.id(),
                "the database answers again"
            );
        }
    }

    /// The database could not be reached.
    pub fn failed(&self, why: &str) {
        let mut closed = self.closed.lock().expect("lock");
        match closed.as_mut() {
            Some(c) => c.why = why.to_string(),
            None => {
                let incident = Incident::record(
                    "the database cannot be reached: seat requests are answered 'unavailable' until it answers again",
                    &why,
                );
                let now = Instant::now();
                *closed = Some(Closed {
                    since: now,
                    probe: now,
                    why: why.to_string(),
                    incident,
                });
                self.signal.send_replace(true);
            }
        }
    }

    /// Why the database is away, if it is (for the log: database text).
    pub fn down(&self) -> Option<String> {
        self.closed
            .lock()
            .expect("lock")
            .as_ref()
            .map(|c| c.why.clone())
    }

    /// The outage's incident, if the database is away.
    pub fn incident(&self) -> Option<Incident> {
        self.closed
            .lock()
            .expect("lock")
            .as_ref()
            .map(|c| c.incident.clone())
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
        assert_eq!(g.admit().unwrap_err(), g.incident().unwrap().id());
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
