//! Protocol sessions held in memory by one instance: keys, replay window,
//! idle expiry, and bounds so memory cannot grow without limit.
//!
//! A session answered by a ServerHello is *pending* until its first valid
//! envelope: a replayed hello (which nobody can finish, its ephemeral key
//! is the recording client's) costs one entry of a small table that evicts
//! its oldest, never a place among the `max_sessions` live ones nor a
//! resumption ticket. The first valid request promotes it.
//!
//! The live table is ordered by last use, so when it is full the least
//! recently used session is the first to look at: making room is O(1) per
//! session reclaimed, never a scan under the lock.
//!
//! A session whose identity is revoked or expired moves to a small table of
//! *ended* sessions, which only answers its next request with the sealed
//! refusal; it no longer counts as live.

use chrono::{DateTime, Utc};
use floatlm_protocol::envelope::ReplayWindow;
use floatlm_protocol::keys::SessionKeys;
use hashlink::LinkedHashMap;
use std::collections::hash_map::RandomState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::identities::{IdentityRefusal, RefusalKind};

/// Pending sessions kept at most (about 300 bytes each).
pub const MAX_PENDING: usize = 4096;
/// Ended sessions kept at most, waiting to tell their client why.
pub const MAX_ENDED: usize = 4096;

/// How a session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    Handshake,
    Resume,
}

/// What a request needs to open and seal: keys and the replay window.
pub struct Channel {
    pub keys: SessionKeys,
    pub window: ReplayWindow,
}

pub struct Session {
    pub identity_id: String,
    /// The identity's own expiry, checked on every request (database clock).
    pub identity_expires: Option<DateTime<Utc>>,
    pub opened: Opened,
    pub channel: Mutex<Channel>,
    created: Instant,
    /// Milliseconds after `created` of the last valid request.
    used_ms: AtomicU64,
}

impl Session {
    pub fn new(
        identity_id: String,
        identity_expires: Option<DateTime<Utc>>,
        opened: Opened,
        keys: SessionKeys,
    ) -> Self {
        Session {
            identity_id,
            identity_expires,
            opened,
            channel: Mutex::new(Channel {
                keys,
                window: ReplayWindow::default(),
            }),
            created: Instant::now(),
            used_ms: AtomicU64::new(0),
        }
    }

    /// Marks a valid request.
    pub fn touch(&self) {
        let ms = self.created.elapsed().as_millis() as u64;
        self.used_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.created
            .elapsed()
            .saturating_sub(Duration::from_millis(self.used_ms.load(Ordering::Relaxed)))
    }

    fn is_idle(&self, idle: Duration) -> bool {
        self.idle_for() >= idle
    }
}

type Map<V> = LinkedHashMap<String, V, RandomState>;

struct Table {
    /// Least recently used first.
    live: Map<Arc<Session>>,
    /// Oldest first.
    pending: Map<Arc<Session>>,
    /// Oldest first.
    ended: Map<(Arc<Session>, IdentityRefusal)>,
}

/// Where a request's session was found.
pub enum Found {
    Live(Arc<Session>),
    Pending(Arc<Session>),
    /// Its identity was refused: answer that, sealed, then forget it.
    Ended(Arc<Session>, IdentityRefusal),
}

impl Found {
    pub fn session(&self) -> &Arc<Session> {
        match self {
            Found::Live(s) | Found::Pending(s) | Found::Ended(s, _) => s,
        }
    }
}

/// What promoting a pending session did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promotion {
    /// It is live now: this request is its first (hand out the ticket).
    Promoted,
    /// A concurrent request promoted it first.
    AlreadyLive,
    /// The live table is full of sessions in use.
    Full,
    /// Its identity was refused meanwhile.
    Ended(IdentityRefusal),
}

pub struct Sessions {
    table: Mutex<Table>,
    max: usize,
    idle: Duration,
    handshakes: AtomicU64,
    resumes: AtomicU64,
    resumes_refused: AtomicU64,
    hellos: AtomicU64,
    pending_evicted: AtomicU64,
    tickets: AtomicU64,
    refused: AtomicU64,
}

/// Sessions since start, by how (for `admin status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SessionCounts {
    /// Live sessions (confirmed by a valid request), at most `max_sessions`.
    pub active: usize,
    /// Answered hellos not yet confirmed by a request.
    pub pending: usize,
    /// Sessions confirmed after a handshake with the identity secret.
    pub handshakes: u64,
    /// Sessions confirmed after a resumption.
    pub resumes: u64,
    pub resumes_refused: u64,
    /// ServerHellos answered (handshakes and resumptions, confirmed or not).
    pub hellos: u64,
    /// Pending sessions dropped unconfirmed to make room for newer ones.
    pub pending_evicted: u64,
    /// Resumption tickets handed out (one per confirmed session).
    pub tickets_issued: u64,
    /// Sessions ended because their identity was revoked or expired.
    pub identity_refused: u64,
}

impl Sessions {
    pub fn new(max: usize, idle: Duration) -> Self {
        Sessions {
            table: Mutex::new(Table {
                live: Map::with_hasher(RandomState::new()),
                pending: Map::with_hasher(RandomState::new()),
                ended: Map::with_hasher(RandomState::new()),
            }),
            max,
            idle,
            handshakes: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            resumes_refused: AtomicU64::new(0),
            hellos: AtomicU64::new(0),
            pending_evicted: AtomicU64::new(0),
            tickets: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn count_resume_refused(&self) {
        self.resumes_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A session refused at a request (its identity found refused there).
    pub fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_ticket(&self) {
        self.tickets.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> SessionCounts {
        let (active, pending) = {
            let t = self.table.lock().expect("lock");
            (t.live.len(), t.pending.len())
        };
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SessionCounts {
            active,
            pending,
            handshakes: n(&self.handshakes),
            resumes: n(&self.resumes),
            resumes_refused: n(&self.resumes_refused),
            hellos: n(&self.hellos),
            pending_evicted: n(&self.pending_evicted),
            tickets_issued: n(&self.tickets),
            identity_refused: n(&self.refused),
        }
    }

    /// Makes room for one live session by dropping idle ones from the
    /// least-recently-used end; false when the oldest is still in use.
    fn make_room(&self, t: &mut Table) -> bool {
        while t.live.len() >= self.max {
            match t.live.front() {
                Some((_, s)) if s.is_idle(self.idle) => {
                    t.live.pop_front();
                }
                _ => return false,
            }
        }
        true
    }

    /// Whether a new session could become live (checked before the
    /// handshake work). O(1) amortised: each idle session is dropped once.
    pub fn has_room(&self) -> bool {
        let mut t = self.table.lock().expect("lock");
        self.make_room(&mut t)
    }

    /// Keeps a session answered by a ServerHello until its first request;
    /// the oldest pending one goes when the table is full.
    pub fn insert_pending(&self, id: String, session: Session) {
        self.hellos.fetch_add(1, Ordering::Relaxed);
        let mut t = self.table.lock().expect("lock");
        t.pending.insert(id, Arc::new(session));
        while t.pending.len() > MAX_PENDING {
            t.pending.pop_front();
            self.pending_evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The session `id`, wherever it is; None when unknown or idle.
    pub fn get(&self, id: &str) -> Option<Found> {
        let mut t = self.table.lock().expect("lock");
        if let Some(s) = t.live.to_back(id) {
            if s.is_idle(self.idle) {
                t.live.remove(id);
                return None;
            }
            return Some(Found::Live(s.clone()));
        }
        if let Some(s) = t.pending.get(id) {
            if s.is_idle(self.idle) {
                t.pending.remove(id);
                return None;
            }
            return Some(Found::Pending(s.clone()));
        }
        t.ended
            .get(id)
            .map(|(s, why)| Found::Ended(s.clone(), why.clone()))
    }

    /// Makes the pending session `id` live after its first valid request.
    /// A session evicted from the pending table meanwhile is still
    /// promoted: its client proved to be live.
    pub fn promote(&self, id: &str, session: &Arc<Session>) -> Promotion {
        let mut t = self.table.lock().expect("lock");
        if t.live.contains_key(id) {
            return Promotion::AlreadyLive;
        }
        if let Some((_, why)) = t.ended.get(id) {
            return Promotion::Ended(why.clone());
        }
        t.pending.remove(id);
        if !self.make_room(&mut t) {
            return Promotion::Full;
        }
        t.live.insert(id.to_string(), session.clone());
        match session.opened {
            Opened::Handshake => &self.handshakes,
            Opened::Resume => &self.resumes,
        }
        .fetch_add(1, Ordering::Relaxed);
        Promotion::Promoted
    }

    /// Forgets session `id`, wherever it is.
    pub fn end(&self, id: &str) {
        let mut t = self.table.lock().expect("lock");
        t.live.remove(id);
        t.pending.remove(id);
        t.ended.remove(id);
    }

    fn move_to_ended(
        &self,
        t: &mut Table,
        ids: Vec<(String, Arc<Session>)>,
        why: &IdentityRefusal,
    ) {
        for (id, s) in ids {
            t.ended.insert(id, (s, why.clone()));
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        while t.ended.len() > MAX_ENDED {
            t.ended.pop_front();
        }
    }

    /// Ends every live and pending session of `identity_id` (revoked): each
    /// answers its next request with `why`, sealed. Returns how many. Scans
    /// the table; revocations are rare.
    pub fn end_identity(&self, identity_id: &str, why: &IdentityRefusal) -> usize {
        let mut t = self.table.lock().expect("lock");
        let mut hit = Vec::new();
        let Table { live, pending, .. } = &mut *t;
        for map in [live, pending] {
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, s)| s.identity_id == identity_id)
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                if let Some(s) = map.remove(&id) {
                    hit.push((id, s));
                }
            }
        }
        let n = hit.len();
        self.move_to_ended(&mut t, hit, why);
        n
    }

    /// Forgets idle sessions and ends those whose identity expired by `now`
    /// (database clock); returns how many were forgotten.
    pub fn sweep(&self, now: DateTime<Utc>) -> usize {
        let mut t = self.table.lock().expect("lock");
        let before = t.live.len() + t.pending.len() + t.ended.len();
        let idle = self.idle;
        t.live.retain(|_, s| !s.is_idle(idle));
        t.pending.retain(|_, s| !s.is_idle(idle));
        t.ended.retain(|_, (s, _)| !s.is_idle(idle));
        let forgotten = before - (t.live.len() + t.pending.len() + t.ended.len());
        let mut expired = Vec::new();
        let Table { live, pending, .. } = &mut *t;
        for map in [live, pending] {
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, s)| s.identity_expires.is_some_and(|e| e <= now))
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                if let Some(s) = map.remove(&id) {
                    expired.push((id, s));
                }
            }
        }
        for (id, s) in expired {
            let why = IdentityRefusal::expired(&s.identity_id, s.identity_expires.unwrap_or(now));
            self.move_to_ended(&mut t, vec![(id, s)], &why);
        }
        forgotten
    }

    /// Forgets every session (clients resume or handshake again).
    pub fn clear(&self) {
        let mut t = self.table.lock().expect("lock");
        t.live.clear();
        t.pending.clear();
        t.ended.clear();
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.table.lock().expect("lock").live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The refusal kinds, as the protocol names them.
pub fn refusal_code(kind: RefusalKind) -> floatlm_protocol::messages::ErrorCode {
    use floatlm_protocol::messages::ErrorCode;
    match kind {
        RefusalKind::Revoked => ErrorCode::IdentityRevoked,
        RefusalKind::Expired => ErrorCode::IdentityExpired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys {
            c2s: [1; 32],
            s2c: [2; 32],
        }
    }

    fn session(identity: &str) -> Session {
        Session::new(identity.into(), None, Opened::Handshake, keys())
    }

    fn is_live(s: &Sessions, id: &str) -> bool {
        matches!(s.get(id), Some(Found::Live(_)))
    }

    #[test]
    fn pending_sessions_do_not_count_and_the_oldest_are_evicted() {
        let s = Sessions::new(2, Duration::from_secs(600));
        for i in 0..MAX_PENDING + 10 {
            s.insert_pending(format!("p{i}"), session("a"));
        }
        let c = s.counts();
        assert_eq!(
            (c.active, c.pending, c.pending_evicted),
            (0, MAX_PENDING, 10)
        );
        assert!(s.get("p0").is_none(), "the oldest went first");
        assert!(s.has_room());
        let Some(Found::Pending(p)) = s.get("p20") else {
            panic!("p20 is pending")
        };
        assert_eq!(s.promote("p20", &p), Promotion::Promoted);
        assert_eq!(s.promote("p20", &p), Promotion::AlreadyLive);
        assert!(is_live(&s, "p20"));
        let c = s.counts();
        assert_eq!((c.active, c.pending, c.handshakes), (1, MAX_PENDING - 1, 1));
    }

    #[test]
    fn a_full_table_makes_room_from_idle_sessions_only() {
        let s = Sessions::new(2, Duration::from_millis(100));
        for id in ["a", "b"] {
            s.insert_pending(id.into(), session("x"));
            let Some(Found::Pending(p)) = s.get(id) else {
                panic!()
            };
            p.touch();
            assert_eq!(s.promote(id, &p), Promotion::Promoted);
        }
        s.insert_pending("c".into(), session("x"));
        let Some(Found::Pending(c)) = s.get("c") else {
            panic!()
        };
        assert!(!s.has_room());
        assert_eq!(s.promote("c", &c), Promotion::Full);
        std::thread::sleep(Duration::from_millis(60));
        // "b" is used again; "a" becomes idle and is least recently used.
        let Some(Found::Live(b)) = s.get("b") else {
            panic!()
        };
        b.touch();
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.has_room());
        assert!(s.get("a").is_none());
        assert!(is_live(&s, "b"));
    }

    #[test]
    fn a_refused_identity_s_sessions_end_and_say_why_once() {
        let s = Sessions::new(10, Duration::from_secs(600));
        s.insert_pending("l".into(), session("x"));
        let Some(Found::Pending(l)) = s.get("l") else {
            panic!()
        };
        s.promote("l", &l);
        s.insert_pending("p".into(), session("x"));
        s.insert_pending("o".into(), session("y"));
        let why = IdentityRefusal::revoked("x", Utc::now());
        assert_eq!(s.end_identity("x", &why), 2);
        assert_eq!(s.counts().active, 0);
        assert!(matches!(s.get("l"), Some(Found::Ended(_, w)) if w == why));
        assert!(matches!(s.get("p"), Some(Found::Ended(..))));
        assert!(matches!(s.get("o"), Some(Found::Pending(_))));
        let Some(Found::Pending(o)) = s.get("o") else {
            panic!()
        };
        s.end("l");
        assert!(s.get("l").is_none());
        // A pending session ended meanwhile is not promoted.
        assert!(matches!(s.promote("p", &o), Promotion::Ended(_)));
    }

    #[test]
    fn expired_identities_end_at_the_sweep() {
        let s = Sessions::new(10, Duration::from_secs(600));
        let now = Utc::now();
        let mut e = session("x");
        e.identity_expires = Some(now - chrono::Duration::seconds(1));
        s.insert_pending("e".into(), e);
        s.insert_pending("k".into(), session("y"));
        s.sweep(now);
        assert!(matches!(s.get("e"), Some(Found::Ended(_, w)) if w.kind == RefusalKind::Expired));
        assert!(matches!(s.get("k"), Some(Found::Pending(_))));
    }
}
