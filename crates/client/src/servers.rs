//! Server selection: each server's state as this client sees it, which
//! servers a new session races (its affinity group first, the others when
//! every member is failing), which ones a request is hedged on, and the
//! watcher that brings the client back to its group.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::client::{Attempt, Channel, Client, Inner};
use crate::ClientError;

/// How one server is doing, as seen by this client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerState {
    /// Never contacted yet.
    Unknown,
    Ok,
    Failing {
        since: SystemTime,
        last_error: String,
        retries: u32,
    },
}

#[derive(Debug, Clone)]
pub struct ServerStatus {
    /// HOST:PORT.
    pub address: String,
    /// Reached over HTTPS.
    pub tls: bool,
    /// The affinity group the server is tagged with.
    pub group: Option<String>,
    /// In the client's own affinity group (every server is when the client
    /// has none).
    pub home: bool,
    pub state: ServerState,
    /// The instance id that last answered at this address.
    pub instance: Option<String>,
    /// Whether the client's requests currently go to this server.
    pub active: bool,
}

/// One server and what the client knows of it: its state, when it last
/// failed, the instance id that last answered there.
pub(crate) struct ServerEntry {
    pub(crate) spec: crate::ServerSpec,
    pub(crate) state: std::sync::Mutex<(ServerState, Option<Instant>, Option<String>)>,
}

impl ServerEntry {
    pub(crate) fn new(spec: crate::ServerSpec) -> ServerEntry {
        ServerEntry {
            spec,
            state: std::sync::Mutex::new((ServerState::Unknown, None, None)),
        }
    }
}

/// Whether a server is worth a session now.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Readiness {
    /// Not failing, or failing and due for a retry.
    Due,
    /// Failing, not due yet, retries left.
    Waiting,
    /// Failing with `max_retries` used up.
    Spent,
}

impl Client {
    /// Each server's status, in the order given.
    pub fn server_status(&self) -> Vec<ServerStatus> {
        let active = self.active_server();
        self.inner
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let st = s.state.lock().expect("lock");
                ServerStatus {
                    address: s.spec.address.clone(),
                    tls: s.spec.tls,
                    group: s.spec.group.clone(),
                    home: self.home(i),
                    state: st.0.clone(),
                    instance: st.2.clone(),
                    active: active == Some(i),
                }
            })
            .collect()
    }

    /// The client's own affinity group ([`crate::Options::group`]).
    pub fn group(&self) -> Option<&str> {
        self.inner.options.group.as_deref()
    }

    /// The group of the server the client's requests go to now (None: no
    /// current server, or it has no group). Differs from [`Client::group`]
    /// while the client has failed over away from its own group.
    pub fn group_in_use(&self) -> Option<String> {
        self.active_server()
            .and_then(|i| self.inner.servers[i].spec.group.clone())
    }

    fn active_server(&self) -> Option<usize> {
        self.inner
            .active
            .try_lock()
            .ok()
            .and_then(|a| a.as_ref().map(|c| c.server))
    }

    /// Whether server `i` is in the client's own group.
    fn home(&self, i: usize) -> bool {
        match &self.inner.options.group {
            None => true,
            Some(g) => self.inner.servers[i].spec.group.as_deref() == Some(g.as_str()),
        }
    }

    pub(crate) fn mark_ok(&self, i: usize, instance: Option<&str>) {
        let mut st = self.inner.servers[i].state.lock().expect("lock");
        st.0 = ServerState::Ok;
        st.1 = None;
        if let Some(inst) = instance {
            st.2 = Some(inst.to_string());
        }
    }

    pub(crate) fn mark_failed(&self, i: usize, error: &str) {
        let mut st = self.inner.servers[i].state.lock().expect("lock");
        let (since, retries) = match &st.0 {
            ServerState::Failing { since, retries, .. } => (*since, retries + 1),
            _ => (SystemTime::now(), 0),
        };
        tracing::warn!(server = %self.inner.servers[i].spec.address, error, "license server failing");
        st.0 = ServerState::Failing {
            since,
            last_error: error.to_string(),
            retries,
        };
        st.1 = Some(Instant::now());
    }

    fn readiness(&self, i: usize) -> (Readiness, Option<Instant>) {
        let o = &self.inner.options;
        let st = self.inner.servers[i].state.lock().expect("lock");
        match (&st.0, st.1) {
            (ServerState::Failing { retries, .. }, Some(at)) => {
                if o.max_retries.is_some_and(|m| *retries >= m) {
                    (Readiness::Spent, None)
                } else if at.elapsed() >= o.retry_interval {
                    (Readiness::Due, None)
                } else {
                    (Readiness::Waiting, Some(at + o.retry_interval))
                }
            }
            _ => (Readiness::Due, None),
        }
    }

    /// Servers worth a session now, in tiers raced one after the other:
    /// the due members of the client's group, then the due others (every
    /// server is in the group when the client has none). When no server at
    /// all is due, every one within `max_retries` in one tier, group first:
    /// waiting out `retry_interval` would only lose the seats.
    fn tiers(&self) -> Vec<Vec<usize>> {
        let (mut home_due, mut other_due, mut budget, mut budget_other) =
            (vec![], vec![], vec![], vec![]);
        for i in 0..self.inner.servers.len() {
            let home = self.home(i);
            match self.readiness(i).0 {
                Readiness::Due if home => home_due.push(i),
                Readiness::Due => other_due.push(i),
                Readiness::Waiting if home => budget.push(i),
                Readiness::Waiting => budget_other.push(i),
                Readiness::Spent => {}
            }
        }
        if home_due.is_empty() && other_due.is_empty() {
            budget.extend(budget_other);
            return vec![budget];
        }
        [home_due, other_due]
            .into_iter()
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// The current channel, or a new one from the first server to answer
    /// (each given `timeout`), group first.
    pub(crate) async fn channel(&self, timeout: Duration) -> Result<Arc<Channel>, ClientError> {
        let mut active = self.inner.active.lock().await;
        if let Some(ch) = active.as_ref() {
            if !self.home(ch.server) {
                self.watch_home();
            }
            return Ok(ch.clone());
        }
        let tiers = self.tiers();
        if tiers.iter().all(Vec::is_empty) {
            return Err(ClientError::Unreachable(self.failure_summary()));
        }
        let mut fatal = None;
        let mut unavailable = None;
        for tier in tiers {
            if let Some(ch) = self.race(tier, timeout, &mut fatal, &mut unavailable).await {
                *active = Some(ch.clone());
                if !self.home(ch.server) {
                    tracing::warn!(
                        group = self.group().unwrap_or(""),
                        server = %self.inner.servers[ch.server].spec.address,
                        "every server of the client's affinity group is failing; using another group"
                    );
                    self.watch_home();
                }
                return Ok(ch);
            }
        }
        Err(fatal
            .or(unavailable.map(ClientError::Unavailable))
            .unwrap_or_else(|| ClientError::Unreachable(self.failure_summary())))
    }

    /// Opens a session on each of `servers` at once; the first to answer
    /// wins, the rest are aborted. Failures are recorded in the servers'
    /// states, a final one in `fatal`, "database unavailable" in
    /// `unavailable`.
    async fn race(
        &self,
        servers: Vec<usize>,
        timeout: Duration,
        fatal: &mut Option<ClientError>,
        unavailable: &mut Option<String>,
    ) -> Option<Arc<Channel>> {
        let mut set = tokio::task::JoinSet::new();
        for i in servers {
            let this = self.clone();
            set.spawn(async move { (i, this.open_channel(i, timeout).await) });
        }
        while let Some(joined) = set.join_next().await {
            let Ok((i, result)) = joined else { continue };
            match result {
                Ok(ch) => {
                    set.abort_all();
                    return Some(Arc::new(ch));
                }
                Err(Attempt::Fatal(e)) => {
                    self.mark_failed(i, &e.to_string());
                    fatal.get_or_insert(e);
                }
                Err(Attempt::Failover(msg) | Attempt::Gateway(msg)) => self.mark_failed(i, &msg),
                Err(Attempt::Unavailable(msg)) => {
                    self.mark_failed(i, &msg);
                    unavailable
                        .get_or_insert(format!("{}: {msg}", self.inner.servers[i].spec.address));
                }
                Err(Attempt::Rehandshake) => self.mark_failed(i, "handshake refused"),
            }
        }
        None
    }

    pub(crate) fn failure_summary(&self) -> String {
        self.server_status()
            .iter()
            .map(|s| match &s.state {
                ServerState::Failing { last_error, .. } => format!("{}: {last_error}", s.address),
                _ => format!("{}: not tried", s.address),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Servers to hedge on besides `primary`, best first: the group's
    /// members while one of them is in use or due for a retry, else the
    /// others; within each, those answering lately, those never tried,
    /// those failing. Those in use or due for a retry; when
    /// none is, every one within `max_retries` (a server marked failing a
    /// moment ago may well be back, and the primary is not answering).
    pub(crate) fn hedge_candidates(&self, primary: usize) -> Vec<usize> {
        let mut c: Vec<usize> = self.tiers().concat();
        c.retain(|&i| i != primary);
        // Another member of the group can still answer: the other groups
        // are not asked (they are for when the whole group is failing).
        if c.iter().any(|&i| self.home(i)) {
            c.retain(|&i| self.home(i));
        }
        if c.is_empty() {
            c = (0..self.inner.servers.len())
                .filter(|&i| i != primary && self.readiness(i).0 != Readiness::Spent)
                .collect();
        }
        let rank = |i: &usize| {
            let state = match self.inner.servers[*i].state.lock().expect("lock").0 {
                ServerState::Ok => 0,
                ServerState::Unknown => 1,
                ServerState::Failing { .. } => 2,
            };
            (!self.home(*i), state)
        };
        c.sort_by_key(rank);
        c
    }

    /// While the current server is outside the client's group, a task asks
    /// the group's members again each time one is due (every
    /// `retry_interval`, up to `max_retries`), and moves the session back
    /// to the first that answers. It holds the client weakly, and ends when
    /// the client is back, dropped, or out of retries.
    fn watch_home(&self) {
        if self.inner.options.group.is_none() || self.inner.home_watch.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.inner.home_watch.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            while let Some(next) = Self::next_home_check(&weak).await {
                tokio::time::sleep_until(next.into()).await;
                let Some(inner) = weak.upgrade() else { return };
                if (Client { inner }).probe_home().await {
                    break;
                }
            }
            if let Some(inner) = weak.upgrade() {
                inner.home_watch.store(false, Ordering::Release);
            }
        });
    }

    /// When to ask the group's members next; None when there is nothing to
    /// do (client dropped, back home, no member with retries left).
    async fn next_home_check(weak: &Weak<Inner>) -> Option<Instant> {
        let c = Client {
            inner: weak.upgrade()?,
        };
        // Waits for the lock (not try_lock): the task starts while
        // `channel` still holds it, having just moved to another group.
        let active = c.inner.active.lock().await.as_ref().map(|ch| ch.server);
        if active.is_none_or(|i| c.home(i)) {
            return None;
        }
        (0..c.inner.servers.len())
            .filter(|&i| c.home(i))
            .filter_map(|i| match c.readiness(i) {
                (Readiness::Due, _) => Some(Instant::now()),
                (Readiness::Waiting, at) => at,
                (Readiness::Spent, _) => None,
            })
            .min()
    }

    /// Races the group's members that are due; the first to answer becomes
    /// the current server (its session resumed from the ticket: same
    /// leases, no login). True when back home.
    async fn probe_home(&self) -> bool {
        let due: Vec<usize> = (0..self.inner.servers.len())
            .filter(|&i| self.home(i) && self.readiness(i).0 == Readiness::Due)
            .collect();
        if due.is_empty() {
            return false;
        }
        let (mut fatal, mut unavailable) = (None, None);
        let timeout = self.inner.options.request_timeout;
        let Some(ch) = self.race(due, timeout, &mut fatal, &mut unavailable).await else {
            return false;
        };
        let mut active = self.inner.active.lock().await;
        if active.as_ref().is_none_or(|a| !self.home(a.server)) {
            tracing::info!(
                group = self.group().unwrap_or(""),
                server = %self.inner.servers[ch.server].spec.address,
                "back to the client's affinity group"
            );
            *active = Some(ch);
        }
        true
    }
}
