//! Connection management: racing handshakes, sealed calls, failover, status.

use floatlm_protocol::envelope::{self, Binding, Direction};
use floatlm_protocol::handshake::{ClientHandshake, ResumeGrant};
use floatlm_protocol::keys::SessionKeys;
use floatlm_protocol::messages::{
    AuthInfo, ErrorCode, FeatureInfo, Request, Response, SealedResponse,
};
use floatlm_protocol::{
    HEADER_INSTANCE, HEADER_SESSION, PATH_HANDSHAKE, PATH_PING, PATH_REQUEST, PATH_RESUME,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::handle::SeatHandle;
use crate::{ClientError, NoLicenseReason, ServerSpec};

/// Tuning knobs; [`Options::from_env`] fills the auth fields.
#[derive(Debug, Clone)]
pub struct Options {
    /// Heartbeat at this fraction of the lease TTL (default 1/3).
    pub heartbeat_fraction: f64,
    /// A failed server is tried again after this long (default 60 s).
    pub retry_interval: Duration,
    /// How often a failed server is retried; None = forever.
    pub max_retries: Option<u32>,
    /// Timeout of one HTTP request (default 5 s).
    pub request_timeout: Duration,
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
        client.channel().await?;
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
        let sent = Instant::now();
        match self.call(&req).await? {
            Response::Granted {
                lease,
                feature,
                ttl_ms,
                ..
            } => Ok(SeatHandle::start(
                self.clone(),
                feature,
                lease,
                sent,
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

    /// The current channel, or a new one from the first server to answer.
    pub(crate) async fn channel(&self) -> Result<Arc<Channel>, ClientError> {
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
            set.spawn(async move { (i, this.open_channel(i).await) });
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
    async fn open_channel(&self, i: usize) -> Result<Channel, Attempt> {
        let id = &self.inner.servers[i].spec.identity_id;
        let ticket = self.inner.tickets.lock().expect("lock").get(id).cloned();
        if let Some(t) = ticket {
            match self.resume(i, &t).await {
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
        self.handshake(i).await
    }

    async fn handshake(&self, i: usize) -> Result<Channel, Attempt> {
        let spec = &self.inner.servers[i].spec;
        let (hs, hello) = ClientHandshake::start(&spec.identity_id, spec.secret.as_bytes(), None)
            .map_err(|e| Attempt::Fatal(ClientError::BadIdentity(e.to_string())))?;
        let auth_failed = || {
            Attempt::Fatal(ClientError::AuthFailed {
                server: spec.address.clone(),
            })
        };
        let ch = self
            .exchange(i, PATH_HANDSHAKE, hs, hello, auth_failed)
            .await?;
        self.inner.stats.lock().expect("lock").handshakes += 1;
        Ok(ch)
    }

    async fn resume(&self, i: usize, ticket: &Ticket) -> Result<Channel, Attempt> {
        let (hs, hello) = ClientHandshake::resume(&ticket.bytes, &ticket.secret, None)
            .map_err(|_| Attempt::Rehandshake)?;
        let ch = self
            .exchange(i, PATH_RESUME, hs, hello, || Attempt::Rehandshake)
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
        on_401: impl Fn() -> Attempt,
    ) -> Result<Channel, Attempt> {
        let spec = &self.inner.servers[i].spec;
        let resp = self
            .inner
            .http
            .post(format!("http://{}{path}", spec.address))
            .header(HEADER_INSTANCE, &self.inner.instance_id)
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

    async fn send(&self, ch: &Channel, req: &Request) -> Result<Response, Attempt> {
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
        let resp = self
            .inner
            .http
            .post(format!("http://{}{PATH_REQUEST}", spec.address))
            .header(HEADER_INSTANCE, &self.inner.instance_id)
            .header(HEADER_SESSION, &ch.session)
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
            ok => Ok(ok),
        }
    }

    /// Sends `req`, moving to another server when one fails; the request is
    /// resent unchanged (same request id), so the server acts on it once.
    pub(crate) async fn call(&self, req: &Request) -> Result<Response, ClientError> {
        let mut last = String::new();
        let mut unavailable = None;
        let mut retried_gateway = false;
        for _ in 0..(2 * self.inner.servers.len() + 2) {
            let ch = self.channel().await?;
            match self.send(&ch, req).await {
                Ok(r) => {
                    self.mark_ok(ch.server, None);
                    return Ok(r);
                }
                Err(Attempt::Fatal(e)) => {
                    if matches!(e, ClientError::IdentityRefused { .. }) {
                        // The server ended the session: the next call
                        // handshakes afresh (and hears the refusal again).
                        self.drop_channel(&ch).await;
                    }
                    return Err(e);
                }
                Err(Attempt::Rehandshake) => {
                    last = "session unknown on the server (expired, or another instance answered)"
                        .into();
                    self.drop_channel(&ch).await;
                }
                Err(Attempt::Gateway(msg)) if !retried_gateway => {
                    // A proxy in front may pick a live instance this time:
                    // resume there before calling the address failed.
                    retried_gateway = true;
                    last = msg;
                    self.drop_channel(&ch).await;
                    match self.open_channel(ch.server).await {
                        Ok(new) => self.set_channel(new).await,
                        Err(Attempt::Fatal(e)) => return Err(e),
                        Err(_) => self.mark_failed(ch.server, &last),
                    }
                }
                Err(Attempt::Unavailable(msg)) => {
                    self.mark_failed(ch.server, &msg);
                    unavailable = Some(format!(
                        "{}: {msg}",
                        self.inner.servers[ch.server].spec.address
                    ));
                    last = msg;
                    self.drop_channel(&ch).await;
                }
                Err(Attempt::Failover(msg) | Attempt::Gateway(msg)) => {
                    self.mark_failed(ch.server, &msg);
                    last = msg;
                    self.drop_channel(&ch).await;
                }
            }
        }
        Err(match unavailable {
            Some(m) => ClientError::Unavailable(m),
            None => {
                ClientError::Unreachable(format!("gave up after repeated failures; last: {last}"))
            }
        })
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
    if code.as_deref() == Some("unavailable") {
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
