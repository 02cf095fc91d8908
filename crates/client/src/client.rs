//! Connection management: racing handshakes, sealed calls, failover, status.

use floatlm_protocol::envelope::{self, Binding, Direction};
use floatlm_protocol::handshake::{ClientHandshake, ResumeGrant};
use floatlm_protocol::keys::SessionKeys;
use floatlm_protocol::messages::{
    AuthInfo, ErrorCode, FeatureInfo, HeldSeat, Request, Response, SealedResponse,
};
use floatlm_protocol::{
    HEADER_INSTANCE, HEADER_SESSION, PATH_HANDSHAKE, PATH_PING, PATH_REQUEST, PATH_RESUME,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::handle::SeatHandle;
use crate::{ClientError, NoLicenseReason, ServerSpec};

/// Tuning knobs; [`Options::from_env`] fills the auth fields.
#[derive(Debug, Clone)]
pub struct Options {
    /// Heartbeat at this fraction of the promise the last answer gave,
    /// counted from that request's send time (default 1/3), and never later
    /// than halfway to the promise's end.
    pub heartbeat_fraction: f64,
    /// A failed server is tried again after this long (default 60 s).
    pub retry_interval: Duration,
    /// How often a failed server is retried; None = forever.
    pub max_retries: Option<u32>,
    /// The longest wait for one server's answer to one request (default
    /// 5 s). A heartbeat waits less: half the time its promise has left, at
    /// least 1.5 s (so that a proxy in front gives up on a hung instance
    /// first), never past the promise's end.
    pub request_timeout: Duration,
    /// When the server asked has not answered within this long, the same
    /// request goes to the next server too, and the first answer counts
    /// (default 500 ms; at most the attempt timeout divided by the number
    /// of servers, so every server is asked within one attempt timeout).
    pub hedge_delay: Duration,
    /// Sent with every login, for the server's auth script and its lease
    /// list; made to fit the protocol's limits first
    /// ([`AuthInfo::sanitized`]: at most 255 characters per name, control
    /// characters replaced).
    pub auth: AuthInfo,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat_fraction: 1.0 / 3.0,
            retry_interval: Duration::from_secs(60),
            max_retries: None,
            request_timeout: Duration::from_secs(5),
            hedge_delay: Duration::from_millis(500),
            auth: AuthInfo::default(),
        }
    }
}

impl Options {
    /// Defaults plus FLOATLM_AUTH_MECH / FLOATLM_AUTH_DATA and the OS account.
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var(k).unwrap_or_default();
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_default();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| env("HOSTNAME"));
        Options {
            auth: AuthInfo {
                mech: env("FLOATLM_AUTH_MECH"),
                data: env("FLOATLM_AUTH_DATA"),
                groups: os_groups(&user),
                user,
                host,
            },
            ..Options::default()
        }
    }
}

/// The names of the groups `user` belongs to, from /etc/group.
fn os_groups(user: &str) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string("/etc/group") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let members = f.nth(2)?;
            members
                .split(',')
                .any(|m| m == user)
                .then(|| name.to_string())
        })
        .collect()
}

/// The shortest wait for one answer, however close a deadline: a proxy in
/// front must get to give up on a hung instance and retry the request on
/// the next one (the shipped NGINX configs: `proxy_read_timeout 1s`) before
/// the client gives up on the proxy, which the proxy would log as a client
/// abort (499) without counting the instance as failed.
pub(crate) const MIN_ATTEMPT: Duration = Duration::from_millis(1500);
/// Hedges never start closer together than this.
const MIN_HEDGE: Duration = Duration::from_millis(50);

/// How one round of a call spends its time, derived from how much it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// The longest wait for one server's answer (each HTTP exchange).
    pub attempt: Duration,
    /// Ask the next server too when none answered this long.
    pub hedge: Duration,
}

impl Timing {
    /// `left`: the time until the call's deadline (a heartbeat: until its
    /// promise ends), None without one; `servers`: how many there are.
    pub(crate) fn new(left: Option<Duration>, servers: usize, o: &Options) -> Timing {
        let attempt = match left {
            None => o.request_timeout,
            Some(left) => (left / 2).max(MIN_ATTEMPT).min(o.request_timeout).min(left),
        };
        let hedge = o
            .hedge_delay
            .min(attempt / servers.max(1) as u32)
            .max(MIN_HEDGE);
        Timing { attempt, hedge }
    }
}

/// A call's answer, and what a promise in it is counted from.
pub(crate) struct Answered {
    pub response: Response,
    /// When the request that got this answer was sent: a promise in the
    /// answer runs from here (docs/protocol.md, *A promise*).
    pub sent: Instant,
    /// How many times the request went out (hedges and resends included):
    /// more than once, an earlier copy may have been acted on unheard.
    pub sends: u32,
}

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
    pub address: String,
    pub state: ServerState,
    /// The instance id that last answered at this address.
    pub instance: Option<String>,
    /// Whether the client's requests currently go to this server.
    pub active: bool,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct PingInfo {
    pub instance: String,
    pub version: String,
    pub protocol: u8,
    #[serde(skip)]
    pub round_trip: Duration,
}

/// Sessions this client opened, by how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Full handshakes with the identity secret (logins).
    pub handshakes: u64,
    /// Sessions continued from a resumption ticket.
    pub resumes: u64,
    /// Tickets a server refused (expired, revoked); a handshake followed.
    pub resumes_refused: u64,
}

/// The last resumption ticket a server handed out, and its secret.
struct Ticket {
    bytes: Vec<u8>,
    secret: zeroize::Zeroizing<Vec<u8>>,
}

impl Ticket {
    fn from_grant(g: &ResumeGrant) -> Option<Ticket> {
        Some(Ticket {
            bytes: hex::decode(&g.ticket).ok()?,
            secret: zeroize::Zeroizing::new(hex::decode(&g.secret).ok()?),
        })
    }
}

struct ServerEntry {
    spec: ServerSpec,
    state: Mutex<(ServerState, Option<Instant>, Option<String>)>,
}

pub(crate) struct Channel {
    server: usize,
    session: String,
    keys: SessionKeys,
    seq: AtomicU64,
}

pub(crate) struct Inner {
    servers: Vec<ServerEntry>,
    http: reqwest::Client,
    pub(crate) options: Options,
    /// Our X-LDK-Instance: proxies hash it to keep us on one instance.
    instance_id: String,
    active: tokio::sync::Mutex<Option<Arc<Channel>>>,
    requests: AtomicU64,
    stats: Mutex<SessionStats>,
    /// The newest resumption ticket per identity id. Instances of one
    /// cluster share the identity and the ticket keys, so a ticket from one
    /// server resumes on another; a foreign server refuses it (one round trip).
    tickets: Mutex<std::collections::HashMap<String, Arc<Ticket>>>,
}

/// A connection to a set of license servers. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

/// How a round of a call ended without an answer.
struct RoundFailure {
    /// What happened on the current server (the caller acts on it), or a
    /// final answer from any.
    primary: Attempt,
    /// `ADDRESS: message` of a hedged server whose database is unavailable.
    unavailable: Option<String>,
}

/// Why one attempt failed, and what to do about it.
enum Attempt {
    /// Server down or overloaded: mark it failed, use another.
    Failover(String),
    /// 502/503/504: whatever answered (a proxy, a draining instance) may
    /// route a second try elsewhere; resume on the same address once.
    Gateway(String),
    /// Our session is gone on that server: resume (or handshake) again.
    Rehandshake,
    /// The server answered, but its database is away: try another server,
    /// and if none does better, say so (not "unreachable").
    Unavailable(String),
    /// A final answer for the application.
    Fatal(ClientError),
}

fn random_id() -> String {
    let a: u64 = rand::random();
    let b: u32 = rand::random();
    format!("{a:016x}{b:08x}")
}

impl Client {
    /// Parses identity strings and connects to the first server that answers.
    pub async fn connect<S: AsRef<str>>(
        identities: &[S],
        options: Options,
    ) -> Result<Client, ClientError> {
        let specs = identities
            .iter()
            .map(|s| s.as_ref().parse())
            .collect::<Result<Vec<ServerSpec>, _>>()?;
        Self::with_servers(specs, options).await
    }

    /// Connects with the identity strings in FLOATLM_IDENTITY (comma separated).
    pub async fn from_env(options: Options) -> Result<Client, ClientError> {
        let ids = std::env::var("FLOATLM_IDENTITY").unwrap_or_default();
        let ids: Vec<&str> = ids
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        Self::connect(&ids, options).await
    }

    pub async fn with_servers(
        servers: Vec<ServerSpec>,
        options: Options,
    ) -> Result<Client, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::BadIdentity(
                "no identity string given (set FLOATLM_IDENTITY or pass -s)".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.request_timeout)
            // Proxies may pin a client with a cookie (nginx/floatlm-cookie.conf).
            .cookie_store(true)
            .build()
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        let client = Client {
            inner: Arc::new(Inner {
                servers: servers
                    .into_iter()
                    .map(|spec| ServerEntry {
                        spec,
                        state: Mutex::new((ServerState::Unknown, None, None)),
                    })
                    .collect(),
                http,
                options,
                instance_id: random_id(),
                active: tokio::sync::Mutex::new(None),
                requests: AtomicU64::new(0),
                stats: Mutex::new(SessionStats::default()),
                tickets: Mutex::new(std::collections::HashMap::new()),
            }),
        };
        client.channel(client.inner.options.request_timeout).await?;
        Ok(client)
    }

    /// `GET /sentinel/ldk/v1/ping` on one address; no identity needed.
    pub async fn ping(address: &str, timeout: Duration) -> Result<PingInfo, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        let start = Instant::now();
        let resp = http
            .get(format!("http://{address}{PATH_PING}"))
            .send()
            .await
            .map_err(|e| ClientError::Unreachable(format!("{address}: {}", describe(&e))))?;
        if !resp.status().is_success() {
            return Err(ClientError::Server {
                server: address.into(),
                message: format!("HTTP {}", resp.status()),
            });
        }
        let mut info: PingInfo = resp.json().await.map_err(|e| ClientError::Server {
            server: address.into(),
            message: format!("not a floatlm server: {e}"),
        })?;
        info.round_trip = start.elapsed();
        Ok(info)
    }

    /// Seat counts of `features` (all when empty).
    pub async fn query(&self, features: &[&str]) -> Result<Vec<FeatureInfo>, ClientError> {
        let req = Request::Info {
            features: features.iter().map(|s| s.to_string()).collect(),
        };
        match self.call(&req).await? {
            Response::Info { features } => Ok(features),
            other => Err(unexpected(other)),
        }
    }

    /// The leases this client's identity holds now, from any session,
    /// anywhere (`floatlm seats`). Each is named by its seat reference,
    /// which [`Client::release_lease`] takes.
    pub async fn mine(&self) -> Result<MySeats, ClientError> {
        match self.call(&Request::Mine {}).await? {
            Response::Mine { leases, more } => Ok(MySeats { leases, more }),
            other => Err(unexpected(other)),
        }
    }

    /// Releases a lease of this client's identity that another session
    /// holds (a workstation that crashed): `lease` is a seat reference from
    /// [`Client::mine`] or the lease id. The holder is told it lost the seat
    /// on its next heartbeat; the seat is free for others once the promise
    /// already given to the holder has run out (`free_at`).
    pub async fn release_lease(&self, lease: &str) -> Result<SeatRelease, ClientError> {
        let answered = self
            .call_until(
                &Request::Release {
                    lease: lease.to_string(),
                },
                None,
            )
            .await?;
        match answered.response {
            Response::SeatReleased {
                released: true,
                free_at_ms,
                ..
            } => Ok(SeatRelease::Released {
                free_at: free_at_ms.map(system_time),
            }),
            Response::SeatReleased { .. } if answered.sends > 1 => Ok(SeatRelease::Resent),
            Response::SeatReleased { .. } => Ok(SeatRelease::NotLive),
            other => Err(unexpected(other)),
        }
    }

    /// Checks out one seat of `feature`; the handle keeps it alive.
    pub async fn checkout(&self, feature: &str) -> Result<SeatHandle, ClientError> {
        // A resent login (failover, a lost answer) whose lease ended in the
        // meantime (an operator released it, it expired while we were away)
        // is answered "lease ended", never "granted": log in afresh, once.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.login(feature).await {
                Err(ClientError::LeaseEnded(_)) if attempts < 2 => continue,
                other => return other,
            }
        }
    }

    async fn login(&self, feature: &str) -> Result<SeatHandle, ClientError> {
        let n = self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let req = Request::Login {
            feature: feature.to_string(),
            // Kept across retries and failover: the server grants it once.
            request_id: format!("{}:{n}", self.inner.instance_id),
            // Within the protocol's limits (trimmed, no control characters,
            // truncated), so the server never refuses what we report.
            auth: self.inner.options.auth.sanitized(),
        };
        let answered = self.call_until(&req, None).await?;
        match answered.response {
            // The promise runs from the send time of the copy that was
            // answered (a hedge or a resend is sent later than the first).
            Response::Granted {
                lease,
                feature,
                ttl_ms,
                ..
            } => Ok(SeatHandle::start(
                self.clone(),
                feature,
                lease,
                answered.sent,
                Duration::from_millis(ttl_ms),
            )),
            other => Err(unexpected(other)),
        }
    }

    /// Each server's status, in the order given.
    pub fn server_status(&self) -> Vec<ServerStatus> {
        let active = self
            .inner
            .active
            .try_lock()
            .ok()
            .and_then(|a| a.as_ref().map(|c| c.server));
        self.inner
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let st = s.state.lock().expect("lock");
                ServerStatus {
                    address: s.spec.address.clone(),
                    state: st.0.clone(),
                    instance: st.2.clone(),
                    active: active == Some(i),
                }
            })
            .collect()
    }

    /// How many sessions this client opened by handshake and by resumption.
    pub fn session_stats(&self) -> SessionStats {
        *self.inner.stats.lock().expect("lock")
    }

    /// The client's own id, sent as X-LDK-Instance.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    fn mark_ok(&self, i: usize, instance: Option<&str>) {
        let mut st = self.inner.servers[i].state.lock().expect("lock");
        st.0 = ServerState::Ok;
        st.1 = None;
        if let Some(inst) = instance {
            st.2 = Some(inst.to_string());
        }
    }

    fn mark_failed(&self, i: usize, error: &str) {
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

    /// Servers worth a handshake now: not failing, or due for a retry. When
    /// every server is failing and none is due, all within `max_retries` are
    /// tried anyway: waiting out `retry_interval` would only lose the seats.
    fn eligible(&self) -> Vec<usize> {
        let o = &self.inner.options;
        let mut due = Vec::new();
        let mut budget_left = Vec::new();
        for i in 0..self.inner.servers.len() {
            let st = self.inner.servers[i].state.lock().expect("lock");
            match (&st.0, st.1) {
                (ServerState::Failing { retries, .. }, Some(at)) => {
                    if o.max_retries.is_none_or(|m| *retries < m) {
                        budget_left.push(i);
                        if at.elapsed() >= o.retry_interval {
                            due.push(i);
                        }
                    }
                }
                _ => due.push(i),
            }
        }
        if due.is_empty() {
            budget_left
        } else {
            due
        }
    }

    /// The current channel, or a new one from the first server to answer
    /// (each given `timeout`).
    pub(crate) async fn channel(&self, timeout: Duration) -> Result<Arc<Channel>, ClientError> {
        let mut active = self.inner.active.lock().await;
        if let Some(ch) = active.as_ref() {
            return Ok(ch.clone());
        }
        let candidates = self.eligible();
        if candidates.is_empty() {
            return Err(ClientError::Unreachable(self.failure_summary()));
        }
        let mut set = tokio::task::JoinSet::new();
        for i in candidates {
            let this = self.clone();
            set.spawn(async move { (i, this.open_channel(i, timeout).await) });
        }
        let mut fatal = None;
        let mut unavailable = None;
        while let Some(joined) = set.join_next().await {
            let Ok((i, result)) = joined else { continue };
            match result {
                Ok(ch) => {
                    let ch = Arc::new(ch);
                    *active = Some(ch.clone());
                    set.abort_all();
                    return Ok(ch);
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
        Err(fatal
            .or(unavailable.map(ClientError::Unavailable))
            .unwrap_or_else(|| ClientError::Unreachable(self.failure_summary())))
    }

    fn failure_summary(&self) -> String {
        self.server_status()
            .iter()
            .map(|s| match &s.state {
                ServerState::Failing { last_error, .. } => format!("{}: {last_error}", s.address),
                _ => format!("{}: not tried", s.address),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A session on server `i`: resumed from its last ticket when there is
    /// one (no login), else a full handshake.
    async fn open_channel(&self, i: usize, timeout: Duration) -> Result<Channel, Attempt> {
        let id = &self.inner.servers[i].spec.identity_id;
        let ticket = self.inner.tickets.lock().expect("lock").get(id).cloned();
        if let Some(t) = ticket {
            match self.resume(i, &t, timeout).await {
                Err(Attempt::Rehandshake) => {
                    self.inner.stats.lock().expect("lock").resumes_refused += 1;
                    let mut tickets = self.inner.tickets.lock().expect("lock");
                    if tickets.get(id).is_some_and(|cur| Arc::ptr_eq(cur, &t)) {
                        tickets.remove(id);
                    }
                }
                other => return other,
            }
        }
        self.handshake(i, timeout).await
    }

    async fn handshake(&self, i: usize, timeout: Duration) -> Result<Channel, Attempt> {
        let spec = &self.inner.servers[i].spec;
        let (hs, hello) = ClientHandshake::start(&spec.identity_id, spec.secret.as_bytes(), None)
            .map_err(|e| Attempt::Fatal(ClientError::BadIdentity(e.to_string())))?;
        let auth_failed = || {
            Attempt::Fatal(ClientError::AuthFailed {
                server: spec.address.clone(),
            })
        };
        let ch = self
            .exchange(i, PATH_HANDSHAKE, hs, hello, timeout, auth_failed)
            .await?;
        self.inner.stats.lock().expect("lock").handshakes += 1;
        Ok(ch)
    }

    async fn resume(
        &self,
        i: usize,
        ticket: &Ticket,
        timeout: Duration,
    ) -> Result<Channel, Attempt> {
        let (hs, hello) = ClientHandshake::resume(&ticket.bytes, &ticket.secret, None)
            .map_err(|_| Attempt::Rehandshake)?;
        let ch = self
            .exchange(i, PATH_RESUME, hs, hello, timeout, || Attempt::Rehandshake)
            .await?;
        self.inner.stats.lock().expect("lock").resumes += 1;
        Ok(ch)
    }

    /// One handshake or resume round trip; `on_401` says what a refusal means.
    async fn exchange(
        &self,
        i: usize,
        path: &str,
        hs: ClientHandshake,
        hello: Vec<u8>,
        timeout: Duration,
        on_401: impl Fn() -> Attempt,
    ) -> Result<Channel, Attempt> {
        let spec = &self.inner.servers[i].spec;
        let resp = self
            .inner
            .http
            .post(format!("http://{}{path}", spec.address))
            .header(HEADER_INSTANCE, &self.inner.instance_id)
            .timeout(timeout)
            .body(hello)
            .send()
            .await
            .map_err(|e| Attempt::Failover(describe(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Attempt::Failover(describe(&e)))?;
        if status.as_u16() == 401 {
            return Err(on_401());
        }
        if !status.is_success() {
            return Err(failover(status, &body));
        }
        let (keys, payload) = hs.finish(&body).map_err(|_| {
            Attempt::Fatal(ClientError::AuthFailed {
                server: spec.address.clone(),
            })
        })?;
        if let Some(reason) = payload.refused.clone() {
            return Err(Attempt::Fatal(ClientError::IdentityRefused {
                server: spec.address.clone(),
                reason,
            }));
        }
        // Servers before tickets-after-confirmation sent the ticket here.
        if let Some(g) = payload.resume.as_ref() {
            self.keep_ticket(&spec.identity_id, g);
        }
        self.mark_ok(i, Some(&payload.instance));
        Ok(Channel {
            server: i,
            session: payload.session.clone(),
            keys,
            seq: AtomicU64::new(0),
        })
    }

    /// Keeps `grant` as the newest resumption ticket of `identity_id`.
    fn keep_ticket(&self, identity_id: &str, grant: &ResumeGrant) {
        if let Some(t) = Ticket::from_grant(grant) {
            self.inner
                .tickets
                .lock()
                .expect("lock")
                .insert(identity_id.to_string(), Arc::new(t));
        }
    }

    /// Forgets the resumption ticket of `identity_id` (its identity was
    /// refused: resuming with it could only be refused too).
    fn forget_ticket(&self, identity_id: &str) {
        self.inner.tickets.lock().expect("lock").remove(identity_id);
    }

    /// Sends `req` once on `ch`; the answer and when the request was sent.
    async fn send(
        &self,
        ch: &Channel,
        req: &Request,
        timeout: Duration,
    ) -> Result<(Response, Instant), Attempt> {
        let spec = &self.inner.servers[ch.server].spec;
        let seq = ch.seq.fetch_add(1, Ordering::Relaxed);
        let binding = Binding {
            method: "POST",
            path: PATH_REQUEST,
            instance: &self.inner.instance_id,
            session: &ch.session,
        };
        let body = envelope::seal(
            &ch.keys.c2s,
            Direction::ClientToServer,
            seq,
            &binding,
            &serde_json::to_vec(req).expect("request serialises"),
        );
        let sent = Instant::now();
        let resp = self
            .inner
            .http
            .post(format!("http://{}{PATH_REQUEST}", spec.address))
            .header(HEADER_INSTANCE, &self.inner.instance_id)
            .header(HEADER_SESSION, &ch.session)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| Attempt::Failover(describe(&e)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Attempt::Failover(describe(&e)))?;
        if status.as_u16() == 401 {
            return Err(Attempt::Rehandshake);
        }
        if status.is_server_error() {
            return Err(failover(status, &bytes));
        }
        if !status.is_success() {
            return Err(Attempt::Fatal(ClientError::Server {
                server: spec.address.clone(),
                message: http_error(status, &bytes),
            }));
        }
        let (rseq, pt) = envelope::open(&ch.keys.s2c, Direction::ServerToClient, &binding, &bytes)
            .map_err(|e| Attempt::Failover(format!("response did not open: {e}")))?;
        if rseq != seq {
            return Err(Attempt::Failover("response answers another request".into()));
        }
        let sealed: SealedResponse = serde_json::from_slice(&pt)
            .map_err(|e| Attempt::Failover(format!("response is not understood: {e}")))?;
        // The first response of a session carries its resumption ticket.
        if let Some(g) = sealed.resume.as_ref() {
            self.keep_ticket(&spec.identity_id, g);
        }
        match sealed.response {
            // The identity was revoked or has expired: final. The server
            // dropped the session; another server would say the same.
            Response::Error { code, message, .. } if code.is_identity_refusal() => {
                self.forget_ticket(&spec.identity_id);
                Err(Attempt::Fatal(ClientError::IdentityRefused {
                    server: spec.address.clone(),
                    reason: message,
                }))
            }
            Response::Error {
                code: ErrorCode::Unavailable,
                message,
                ..
            } => Err(Attempt::Unavailable(message)),
            Response::Error {
                code: ErrorCode::NoLicense,
                reason,
                message,
            } => Err(Attempt::Fatal(ClientError::NoLicense {
                reason: NoLicenseReason::from_code(reason.as_deref()),
                message,
            })),
            Response::Error {
                code: ErrorCode::LeaseEnded,
                message,
                ..
            } => Err(Attempt::Fatal(ClientError::LeaseEnded(message))),
            Response::Error { message, .. } => Err(Attempt::Fatal(ClientError::Server {
                server: spec.address.clone(),
                message,
            })),
            ok => Ok((ok, sent)),
        }
    }

    /// Sends `req` and returns the answer (see [`Client::call_until`]).
    pub(crate) async fn call(&self, req: &Request) -> Result<Response, ClientError> {
        self.call_until(req, None).await.map(|a| a.response)
    }

    /// Sends `req`, hedging on slow servers and moving away from failed
    /// ones, until it is answered or `deadline` (a heartbeat's: when its
    /// promise ends) has passed. Every copy is the same request (same
    /// request id), so the servers act on it once (docs/protocol.md).
    ///
    /// Each round asks the current server; when it has not answered within
    /// the hedge delay, or failed while another copy was in flight, the next
    /// server is asked too, one more every hedge delay, and the first answer
    /// counts ([`Timing`]). A failure of the current server before any hedge
    /// started is handled as before hedging: resume (401), the same address
    /// once more (502/503/504 from a proxy), or another server.
    pub(crate) async fn call_until(
        &self,
        req: &Request,
        deadline: Option<Instant>,
    ) -> Result<Answered, ClientError> {
        let n = self.inner.servers.len();
        let mut last = String::new();
        let mut unavailable: Option<String> = None;
        let mut retried_gateway = false;
        let mut sends = 0;
        for _ in 0..(2 * n + 2) {
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => break,
                },
            };
            let t = Timing::new(left, n, &self.inner.options);
            let ch = match self.channel(t.attempt).await {
                Ok(ch) => ch,
                // A server that answered "database unavailable" says more
                // than the timeouts of the rest.
                Err(ClientError::Unreachable(m)) => {
                    return Err(match unavailable {
                        Some(u) => ClientError::Unavailable(u),
                        None => ClientError::Unreachable(m),
                    })
                }
                Err(e) => return Err(e),
            };
            let failure = match self.round(&ch, req, t, &mut sends).await {
                Ok((response, sent)) => {
                    return Ok(Answered {
                        response,
                        sent,
                        sends,
                    })
                }
                Err(f) => f,
            };
            if let Some(u) = failure.unavailable {
                unavailable = Some(u);
            }
            match failure.primary {
                Attempt::Fatal(e) => {
                    if matches!(e, ClientError::IdentityRefused { .. }) {
                        // The server ended the session: the next call
                        // handshakes afresh (and hears the refusal again).
                        self.drop_channel(&ch).await;
                    }
                    return Err(e);
                }
                Attempt::Rehandshake => {
                    last = "session unknown on the server (expired, or another instance answered)"
                        .into();
                    self.drop_channel(&ch).await;
                }
                Attempt::Gateway(msg) if !retried_gateway => {
                    // A proxy in front may pick a live instance this time:
                    // resume there before calling the address failed.
                    retried_gateway = true;
                    last = msg;
                    self.drop_channel(&ch).await;
                    match self.open_channel(ch.server, t.attempt).await {
                        Ok(new) => self.set_channel(new).await,
                        Err(Attempt::Fatal(e)) => return Err(e),
                        Err(_) => self.mark_failed(ch.server, &last),
                    }
                }
                Attempt::Unavailable(msg) => {
                    self.mark_failed(ch.server, &msg);
                    unavailable = Some(format!(
                        "{}: {msg}",
                        self.inner.servers[ch.server].spec.address
                    ));
                    last = msg;
                    self.drop_channel(&ch).await;
                }
                Attempt::Failover(msg) | Attempt::Gateway(msg) => {
                    self.mark_failed(ch.server, &msg);
                    last = msg;
                    self.drop_channel(&ch).await;
                }
            }
        }
        Err(match unavailable {
            Some(m) => ClientError::Unavailable(m),
            None if deadline.is_some_and(|d| Instant::now() >= d) => {
                ClientError::Unreachable(format!("no server answered in time; last: {last}"))
            }
            None => {
                ClientError::Unreachable(format!("gave up after repeated failures; last: {last}"))
            }
        })
    }

    /// One round of [`Client::call_until`]: `req` on `primary`, hedged on
    /// the other servers. Ok with the first answer (a hedge's channel
    /// becomes the current one, and the primary's server is marked
    /// failing); Err when every copy failed or a final answer came.
    async fn round(
        &self,
        primary: &Arc<Channel>,
        req: &Request,
        t: Timing,
        sends: &mut u32,
    ) -> Result<(Response, Instant), RoundFailure> {
        type Outcome = Result<(Response, Instant, Arc<Channel>), Attempt>;
        let mut set: tokio::task::JoinSet<(usize, bool, Outcome)> = tokio::task::JoinSet::new();
        {
            let (this, ch, req) = (self.clone(), primary.clone(), req.clone());
            set.spawn(async move {
                let r = this.send(&ch, &req, t.attempt).await;
                (ch.server, false, r.map(|(resp, sent)| (resp, sent, ch)))
            });
        }
        *sends += 1;
        let began = Instant::now();
        let mut candidates =
            std::collections::VecDeque::from(self.hedge_candidates(primary.server));
        let mut hedged = false;
        let mut next_hedge = began + t.hedge;
        let mut primary_err: Option<Attempt> = None;
        let mut unavailable = None;
        loop {
            let start_next = tokio::select! {
                joined = set.join_next() => {
                    let Some(joined) = joined else { break };
                    let Ok((i, hedge, outcome)) = joined else { continue };
                    match outcome {
                        Ok((resp, sent, ch)) => {
                            if hedge {
                                self.adopt(primary, ch, primary_err.take(), began.elapsed()).await;
                            }
                            self.mark_ok(i, None);
                            return Ok((resp, sent));
                        }
                        // A final answer (no license, lease ended, identity
                        // refused): every server would say the same.
                        Err(Attempt::Fatal(e)) => {
                            return Err(RoundFailure { primary: Attempt::Fatal(e), unavailable });
                        }
                        Err(a) if !hedge => {
                            if !hedged {
                                // Failed before any hedge: the caller knows
                                // what to do about this server.
                                return Err(RoundFailure { primary: a, unavailable });
                            }
                            primary_err = Some(a);
                        }
                        Err(a) => self.hedge_failed(i, a, &mut unavailable),
                    }
                    // A copy failed: the next server at once, not after
                    // the hedge delay.
                    true
                }
                _ = tokio::time::sleep_until(next_hedge.into()), if !candidates.is_empty() => true,
            };
            if start_next {
                let Some(j) = candidates.pop_front() else {
                    if set.is_empty() {
                        break;
                    }
                    continue;
                };
                let (this, req) = (self.clone(), req.clone());
                set.spawn(async move { (j, true, this.hedge(j, &req, t).await) });
                *sends += 1;
                hedged = true;
                next_hedge = Instant::now() + t.hedge;
            }
        }
        Err(RoundFailure {
            primary: primary_err.unwrap_or_else(|| Attempt::Failover("no answer".into())),
            unavailable,
        })
    }

    /// Servers to hedge on besides `primary`, best first: those in use or
    /// due for a retry; when none is, every one within `max_retries` (a
    /// server marked failing a moment ago may well be back, and the primary
    /// is not answering).
    fn hedge_candidates(&self, primary: usize) -> Vec<usize> {
        let mut c: Vec<usize> = self
            .eligible()
            .into_iter()
            .filter(|&i| i != primary)
            .collect();
        if c.is_empty() {
            let o = &self.inner.options;
            c = (0..self.inner.servers.len())
                .filter(|&i| i != primary)
                .filter(
                    |&i| match &self.inner.servers[i].state.lock().expect("lock").0 {
                        ServerState::Failing { retries, .. } => {
                            o.max_retries.is_none_or(|m| *retries < m)
                        }
                        _ => true,
                    },
                )
                .collect();
        }
        let rank = |i: &usize| match self.inner.servers[*i].state.lock().expect("lock").0 {
            ServerState::Ok => 0,
            ServerState::Unknown => 1,
            ServerState::Failing { .. } => 2,
        };
        c.sort_by_key(rank);
        c
    }

    /// A hedged copy of `req` on server `j`: on the current channel when
    /// it is there, else on a session resumed from the ticket (or a
    /// handshake).
    async fn hedge(
        &self,
        j: usize,
        req: &Request,
        t: Timing,
    ) -> Result<(Response, Instant, Arc<Channel>), Attempt> {
        let current = self
            .inner
            .active
            .try_lock()
            .ok()
            .and_then(|a| a.as_ref().filter(|c| c.server == j).cloned());
        let reused = current.is_some();
        let ch = match current {
            Some(ch) => ch,
            None => match self.open_channel(j, t.attempt).await {
                Ok(ch) => Arc::new(ch),
                // The identity itself is refused: final everywhere.
                Err(Attempt::Fatal(e @ ClientError::IdentityRefused { .. })) => {
                    return Err(Attempt::Fatal(e))
                }
                // Another server's login failing (a wrong secret for that
                // address) is that server's failure, not the answer.
                Err(Attempt::Fatal(e)) => return Err(Attempt::Failover(e.to_string())),
                Err(a) => return Err(a),
            },
        };
        match self.send(&ch, req, t.attempt).await {
            Ok((resp, sent)) => Ok((resp, sent, ch)),
            Err(Attempt::Rehandshake) if reused => {
                self.drop_channel(&ch).await;
                Err(Attempt::Rehandshake)
            }
            Err(a) => Err(a),
        }
    }

    /// Records how a hedge on server `j` failed.
    fn hedge_failed(&self, j: usize, a: Attempt, unavailable: &mut Option<String>) {
        match a {
            Attempt::Unavailable(msg) => {
                self.mark_failed(j, &msg);
                *unavailable = Some(format!("{}: {msg}", self.inner.servers[j].spec.address));
            }
            Attempt::Failover(msg) | Attempt::Gateway(msg) => self.mark_failed(j, &msg),
            // A session refused right after it was opened (a proxy at that
            // address moved it): says nothing about the server.
            Attempt::Rehandshake | Attempt::Fatal(_) => {}
        }
    }

    /// A hedge on `new`'s server answered while `old` had not (or had
    /// failed with `old_err`): `new` becomes the current channel, and
    /// `old`'s server is marked failing, so that the status shows it and
    /// later requests do not wait for it again.
    async fn adopt(
        &self,
        old: &Arc<Channel>,
        new: Arc<Channel>,
        old_err: Option<Attempt>,
        waited: Duration,
    ) {
        let why = match old_err {
            None => Some(format!(
                "no answer within {} ms (hung or overloaded); {} answered instead",
                waited.as_millis(),
                self.inner.servers[new.server].spec.address
            )),
            Some(Attempt::Rehandshake) => None,
            Some(Attempt::Failover(m) | Attempt::Gateway(m) | Attempt::Unavailable(m)) => Some(m),
            Some(Attempt::Fatal(e)) => Some(e.to_string()),
        };
        if let Some(why) = why {
            self.mark_failed(old.server, &why);
        }
        let mut active = self.inner.active.lock().await;
        if active.as_ref().is_none_or(|a| Arc::ptr_eq(a, old)) {
            *active = Some(new);
        }
    }

    async fn set_channel(&self, ch: Channel) {
        let mut active = self.inner.active.lock().await;
        if active.is_none() {
            *active = Some(Arc::new(ch));
        }
    }

    async fn drop_channel(&self, ch: &Arc<Channel>) {
        let mut active = self.inner.active.lock().await;
        if active.as_ref().is_some_and(|a| Arc::ptr_eq(a, ch)) {
            *active = None;
        }
    }
}

fn unexpected(r: Response) -> ClientError {
    ClientError::Server {
        server: "server".into(),
        message: format!("unexpected answer: {r:?}"),
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused or unreachable".into()
    } else {
        e.to_string()
    }
}

/// A non-success answer: 502/503/504 may be a proxy's, worth one more try.
fn failover(status: reqwest::StatusCode, body: &[u8]) -> Attempt {
    let msg = http_error(status, body);
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string));
    if matches!(code.as_deref(), Some("unavailable" | "storage_unavailable")) {
        // A floatlm instance itself (not a proxy) says its database is away.
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string));
        Attempt::Unavailable(message.unwrap_or(msg))
    } else if matches!(status.as_u16(), 502..=504) {
        Attempt::Gateway(msg)
    } else {
        Attempt::Failover(msg)
    }
}

fn http_error(status: reqwest::StatusCode, body: &[u8]) -> String {
    let msg = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    format!("HTTP {status} {msg}").trim().to_string()
}

/// What [`Client::mine`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MySeats {
    pub leases: Vec<HeldSeat>,
    /// How many more the identity holds than one answer could carry.
    pub more: u64,
}

/// What [`Client::release_lease`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeatRelease {
    /// Released; the seat is free for others at `free_at` (database clock).
    Released { free_at: Option<SystemTime> },
    /// No live lease of this identity by that name: already released,
    /// expired, re-granted, another identity's, or never existed.
    NotLive,
    /// Sent more than once (a lost answer, failover) and found not live,
    /// perhaps released by an earlier copy whose answer never came.
    Resent,
}

/// Unix milliseconds as a time.
fn system_time(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn without_a_deadline_an_attempt_waits_the_request_timeout() {
        let t = Timing::new(None, 2, &Options::default());
        assert_eq!(
            t,
            Timing {
                attempt: ms(5000),
                hedge: ms(500)
            }
        );
    }

    #[test]
    fn a_heartbeat_waits_half_its_time_left_at_least_1500_ms_never_past_its_deadline() {
        let o = Options::default();
        // lease_ttl 10 s answered in full: 5.67 s left at the heartbeat.
        assert_eq!(Timing::new(Some(ms(5666)), 2, &o).attempt, ms(2833));
        // Half a TTL answered (5 s): 2.83 s left.
        assert_eq!(Timing::new(Some(ms(2833)), 2, &o).attempt, ms(1500));
        // lease_ttl 60 s: capped by request_timeout.
        assert_eq!(Timing::new(Some(ms(38000)), 2, &o).attempt, ms(5000));
        // Nearly out of time: what is left.
        assert_eq!(Timing::new(Some(ms(900)), 2, &o).attempt, ms(900));
    }

    #[test]
    fn every_server_is_asked_within_one_attempt_timeout() {
        let o = Options::default();
        for servers in 1..=8 {
            for left in [ms(300), ms(1400), ms(2833), ms(40_000)] {
                let t = Timing::new(Some(left), servers, &o);
                assert!(t.hedge <= o.hedge_delay);
                assert!(
                    t.hedge * (servers as u32 - 1) <= t.attempt.max(MIN_HEDGE * 8),
                    "{servers} servers, {left:?} left: {t:?}"
                );
            }
        }
        assert_eq!(Timing::new(Some(ms(1400)), 4, &o).hedge, ms(350));
    }
}
