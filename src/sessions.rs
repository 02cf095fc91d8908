//! Protocol sessions held in memory by one instance: keys, replay window,
//! idle expiry, and a bound so memory cannot grow without limit.

use floatlm_protocol::envelope::ReplayWindow;
use floatlm_protocol::keys::SessionKeys;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Session {
    pub identity_id: String,
    pub keys: SessionKeys,
    pub window: ReplayWindow,
    last_used: Instant,
}

impl Session {
    pub fn new(identity_id: String, keys: SessionKeys) -> Self {
        Session {
            identity_id,
            keys,
            window: ReplayWindow::default(),
            last_used: Instant::now(),
        }
    }

    pub fn touch(&mut self) {
        self.last_used = Instant::now();
    }
}

pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Mutex<Session>>>>,
    max: usize,
    idle: Duration,
    handshakes: AtomicU64,
    resumes: AtomicU64,
    resumes_refused: AtomicU64,
}

/// Sessions opened since start, by how (for `admin status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SessionCounts {
    pub active: usize,
    pub handshakes: u64,
    pub resumes: u64,
    pub resumes_refused: u64,
}

impl Sessions {
    pub fn new(max: usize, idle: Duration) -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
            max,
            idle,
            handshakes: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            resumes_refused: AtomicU64::new(0),
        }
    }

    pub fn count_handshake(&self) {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_resume(&self) {
        self.resumes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_resume_refused(&self) {
        self.resumes_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> SessionCounts {
        SessionCounts {
            active: self.len(),
            handshakes: self.handshakes.load(Ordering::Relaxed),
            resumes: self.resumes.load(Ordering::Relaxed),
            resumes_refused: self.resumes_refused.load(Ordering::Relaxed),
        }
    }

    /// Adds a session; false when the table is full even after dropping idle ones.
    pub fn insert(&self, id: String, session: Session) -> bool {
        let mut map = self.map.lock().expect("lock");
        if map.len() >= self.max {
            let idle = self.idle;
            map.retain(|_, s| {
                s.lock()
                    .map(|s| s.last_used.elapsed() < idle)
                    .unwrap_or(false)
            });
            if map.len() >= self.max {
                return false;
            }
        }
        map.insert(id, Arc::new(Mutex::new(session)));
        true
    }

    /// Whether a new session would fit (checked before the handshake work).
    pub fn has_room(&self) -> bool {
        let map = self.map.lock().expect("lock");
        map.len() < self.max
            || map.values().any(|s| {
                s.lock()
                    .map(|s| s.last_used.elapsed() >= self.idle)
                    .unwrap_or(true)
            })
    }

    pub fn get(&self, id: &str) -> Option<Arc<Mutex<Session>>> {
        let mut map = self.map.lock().expect("lock");
        let s = map.get(id)?.clone();
        let idle = s
            .lock()
            .map(|s| s.last_used.elapsed() >= self.idle)
            .unwrap_or(true);
        if idle {
            map.remove(id);
            return None;
        }
        Some(s)
    }

    /// Forgets idle sessions; returns how many.
    pub fn sweep(&self) -> usize {
        let mut map = self.map.lock().expect("lock");
        let before = map.len();
        let idle = self.idle;
        map.retain(|_, s| {
            s.lock()
                .map(|s| s.last_used.elapsed() < idle)
                .unwrap_or(false)
        });
        before - map.len()
    }

    /// Forgets every session (clients resume or handshake again).
    pub fn clear(&self) {
        self.map.lock().expect("lock").clear();
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
