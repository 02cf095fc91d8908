//! Fail fast while the database is away.
//!
//! When a database operation fails because the database cannot be reached
//! (connection refused or reset, the pool found no connection in time), the
//! gate closes: client requests are answered "the license server's database
//! is unavailable" at once instead of each waiting out the pool's acquire
//! timeout, which would outlast the client's own request timeout. While
//! closed, one operation every [`PROBE_EVERY`] is let through as a probe; the
//! first success opens the gate again. Each instance also probes the database
//! on a connection of its own every [`PROBE_EVERY`] (`Cluster::watch_database`),
//! so the gate closes about half a second into an outage and opens about half
//! a second after the database is back, with or without client traffic.
//!
//! A database that answers but cannot write (SQLite on a full disk or a
//! read-only file; MySQL out of space or read-only) closes the gate too, as
//! [`Fault::WritesFail`]: grants, extensions and releases fail fast and
//! healthz answers 503, while reads (heartbeats answered from a lease's row,
//! `info`) still go through. Failed writes close it; only a write that
//! commits opens it: the watch's write probe (every probe on SQLite, and on
//! MySQL while writes fail) or any seat change let through as a probe.
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

/// Why the gate is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The database cannot be reached: nothing goes through.
    Unreachable,
    /// The database answers but cannot write (disk full, read-only, I/O
    /// errors): reads go through, seat changes do not. Only a write that
    /// commits opens the gate again; a read that works says nothing.
    WritesFail,
}

/// An outage as the gate knows it.
struct Closed {
    since: Instant,
    /// When the last operation was let through as a probe.
    probe: Instant,
    /// Why (the latest failure's detail: for the log only).
    why: String,
    fault: Fault,
    /// Logged with `why` when the gate closed; what requests are told.
    incident: Incident,
}

pub struct DbGate {
    closed: Mutex<Option<Closed>>,
    /// True while closed as [`Fault::Unreachable`], for reads already
    /// waiting on the database.
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
    /// Ok when a write (or anything that needs the whole database) may go
    /// to the database now; the outage's incident id otherwise.
    pub fn admit(&self) -> Result<(), String> {
        self.admit_if(|_| true)
    }

    /// Ok when a read may go to the database now: unless it cannot be
    /// reached (a database that cannot write still reads).
    pub fn admit_read(&self) -> Result<(), String> {
        self.admit_if(|f| f == Fault::Unreachable)
    }

    fn admit_if(&self, blocks: impl Fn(Fault) -> bool) -> Result<(), String> {
        let mut closed = self.closed.lock().expect("lock");
        match closed.as_mut() {
            Some(c) if blocks(c.fault) => {
                if c.probe.elapsed() >= PROBE_EVERY {
                    c.probe = Instant::now();
                    Ok(())
                } else {
                    Err(c.incident.id().to_string())
                }
            }
            _ => Ok(()),
        }
    }

    /// Runs the read `op`, unless the database cannot be reached (then fails
    /// at once) or that becomes known while `op` waits (then stops waiting: a
    /// request caught by the start of an outage hears so within about half a
    /// second, not after the pool's acquire timeout). Only for reads: a write
    /// dropped here could still commit after its caller was told
    /// "unavailable".
    pub async fn run<T, E, Fut>(&self, op: Fut) -> Result<T, E>
    where
        Fut: std::future::Future<Output = Result<T, E>>,
        E: From<StorageError>,
    {
        self.admit_read()
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

    /// Records what a read found: success says the database can be reached
    /// (it opens a gate closed as [`Fault::Unreachable`], not one closed
    /// because writes fail); an outage closes it; other errors (a
    /// constraint, a conflict) say nothing about the database.
    pub fn observe<T>(&self, result: &Result<T, StorageError>) {
        match result {
            Ok(_) => self.answered(),
            Err(e) => self.observe_error(e),
        }
    }

    /// Records what a write found: one that committed opens the gate.
    pub fn observe_write<T>(&self, result: &Result<T, StorageError>) {
        match result {
            Ok(_) => self.opened(),
            Err(e) => self.observe_error(e),
        }
    }

    /// Records a failed operation: a write failure or an outage closes the
    /// gate; other errors say nothing.
    pub fn observe_error(&self, e: &StorageError) {
        if e.is_write_failure() {
            self.close(Fault::WritesFail, &e.to_string());
        } else if e.is_outage() {
            self.close(Fault::Unreachable, &e.to_string());
        }
    }

    /// A write committed: the database is wholly back.
    pub fn opened(&self) {
        self.open_if(|_| true);
    }

    /// A read was answered: the database can be reached.
    pub fn answered(&self) {
        self.open_if(|f| f == Fault::Unreachable);
    }

    fn open_if(&self, opens: impl Fn(Fault) -> bool) {
        let mut closed = self.closed.lock().expect("lock");
        if closed.as_ref().is_some_and(|c| opens(c.fault)) {
            let c = closed.take().expect("checked");
            self.signal.send_replace(false);
            let after_s = c.since.elapsed().as_secs_f64();
            let incident = c.incident.id().to_string();
            match c.fault {
                Fault::Unreachable => {
                    tracing::warn!(after_s, %incident, "the database answers again")
                }
                Fault::WritesFail => {
                    tracing::warn!(after_s, %incident, "the database writes again")
                }
            }
        }
    }

    /// The database could not be reached.
    pub fn failed(&self, why: &str) {
        self.close(Fault::Unreachable, why);
    }

    fn close(&self, fault: Fault, why: &str) {
        let mut closed = self.closed.lock().expect("lock");
        match closed.as_mut() {
            Some(c) => {
                if c.fault != fault {
                    tracing::warn!(error = %why, ?fault, incident = %c.incident.id(), "the database fault changed");
                }
                c.why = why.to_string();
                c.fault = fault;
            }
            None => {
                let incident = match fault {
                    Fault::Unreachable => Incident::record(
                        "the database cannot be reached: seat requests are answered 'unavailable' until it answers again",
                        &why,
                    ),
                    Fault::WritesFail => Incident::record(
                        "the database cannot write (disk full, read-only or I/O errors): logins and logouts are answered 'unavailable' and healthz 503 until a write commits again; heartbeats are answered from reads",
                        &why,
                    ),
                };
                let now = Instant::now();
                *closed = Some(Closed {
                    since: now,
                    probe: now,
                    why: why.to_string(),
                    fault,
                    incident,
                });
            }
        }
        self.signal.send_replace(fault == Fault::Unreachable);
    }

    /// Why the database is away, if it is (for the log: database text).
    pub fn down(&self) -> Option<String> {
        self.closed
            .lock()
            .expect("lock")
            .as_ref()
            .map(|c| c.why.clone())
    }

    /// What is wrong with the database, if anything is known to be.
    pub fn fault(&self) -> Option<Fault> {
        self.closed.lock().expect("lock").as_ref().map(|c| c.fault)
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

    #[test]
    fn writes_failing_close_writes_only_and_only_a_write_reopens() {
        let g = DbGate::default();
        g.close(Fault::WritesFail, "disk full");
        assert_eq!(g.fault(), Some(Fault::WritesFail));
        assert!(g.admit().is_err(), "writes fail fast");
        assert!(g.admit_read().is_ok(), "reads go through");
        assert!(!*g.signal.borrow(), "reads in flight are not stopped");
        g.observe(&Ok(()));
        assert_eq!(g.fault(), Some(Fault::WritesFail), "a read says nothing");
        g.failed("gone");
        assert!(g.admit_read().is_err(), "unreachable blocks reads too");
        g.observe(&Ok(()));
        assert!(g.down().is_none(), "a read opens an unreachable gate");
        g.close(Fault::WritesFail, "disk full");
        g.observe_write(&Ok(()));
        assert!(g.down().is_none() && g.admit().is_ok(), "a write opens it");
    }
}
