//! Connection management: racing handshakes, sealed calls, failover, status.

use floatlm_protocol::envelope::{self, Binding, Direction};
use floatlm_protocol::handshake::{ClientHandshake, ResumeGrant};
use floatlm_protocol::keys::SessionKeys;
use floatlm_protocol::messages::{
    AuthInfo, ErrorCode, FeatureInfo, HeldSeat, Request, Response, SealedResponse,
};
use floatlm_protocol::{
    HEADER_INSTANCE, HEADER_SESSION, PATH_HANDSHAKE, PATH_REQUEST, PATH_RESUME,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::ClientConfig;
use crate::handle::SeatHandle;
pub(crate) use crate::hedge::Timing;
use crate::servers::ServerEntry;
use crate::transport::{describe, failover, http_error};
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
    /// This client's affinity group: it races only the servers tagged with
    /// it while one of them answers, and fails over to the others when all
    /// are failing (crates/client/README.md, *Affinity groups*). None: every
    /// server is equal.
    pub group: Option<String>,
    /// PEM file of the CA(s) that sign the `https://` servers' certificates;
    /// replaces the system and built-in roots. None: those roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Accept any TLS certificate. Insecure: anyone on the path can pose as
    /// the server. Each client created with it prints a warning on stderr
    /// and logs one.
    pub insecure_skip_tls_verify: bool,
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
            group: None,
            ca_file: None,
            insecure_skip_tls_verify: false,
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

pub(crate) struct Channel {
    pub(crate) server: usize,
    session: String,
    keys: SessionKeys,
    seq: AtomicU64,
}

pub(crate) struct Inner {
    pub(crate) servers: Vec<ServerEntry>,
    http: reqwest::Client,
    pub(crate) options: Options,
    /// Our X-LDK-Instance: proxies hash it to keep us on one instance.
    instance_id: String,
    pub(crate) active: tokio::sync::Mutex<Option<Arc<Channel>>>,
    /// A task is watching for the client's affinity group to answer again.
    pub(crate) home_watch: std::sync::atomic::AtomicBool,
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
pub(crate) enum Attempt {
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

    /// Connects as the client configuration says ([`ClientConfig::load`]:
    /// the client file, then FLOATLM_* variables such as FLOATLM_IDENTITY),
    /// its values laid over `options`.
    pub async fn from_env(options: Options) -> Result<Client, ClientError> {
        Self::from_config(&ClientConfig::load()?, options).await
    }

    /// Connects to the servers of `config`, its values laid over `options`.
    pub async fn from_config(
        config: &ClientConfig,
        options: Options,
    ) -> Result<Client, ClientError> {
        Self::with_servers(config.servers()?, config.options(options)).await
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
        if let Some(g) = &options.group {
            if !servers
                .iter()
                .any(|s| s.group.as_deref() == Some(g.as_str()))
            {
                return Err(ClientError::Config(format!(
                    "group = {g}, but no server is tagged with group {g} (write servers as {g}:HOST:PORT)"
                )));
            }
        }
        let http = crate::transport::http_client(&options, options.request_timeout, true)?;
        let client = Client {
            inner: Arc::new(Inner {
                servers: servers.into_iter().map(ServerEntry::new).collect(),
                http,
                options,
                instance_id: random_id(),
                active: tokio::sync::Mutex::new(None),
                home_watch: std::sync::atomic::AtomicBool::new(false),
                requests: AtomicU64::new(0),
                stats: Mutex::new(SessionStats::default()),
                tickets: Mutex::new(std::collections::HashMap::new()),
            }),
        };
        client.channel(client.inner.options.request_timeout).await?;
        Ok(client)
    }

    /// `GET /sentinel/ldk/v1/ping` on one address (`HOST:PORT`, or
    /// `https://HOST[:PORT]`, or port 443, over TLS with the system roots);
    /// no identity needed.
    pub async fn ping(address: &str, timeout: Duration) -> Result<PingInfo, ClientError> {
        crate::transport::ping(address, timeout, &Options::default()).await
    }

    /// [`Client::ping`] with the TLS settings (`ca_file`,
    /// `insecure_skip_tls_verify`) of `options`.
    pub async fn ping_with(
        address: &str,
        timeout: Duration,
        options: &Options,
    ) -> Result<PingInfo, ClientError> {
        crate::transport::ping(address, timeout, options).await
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

    /// How many sessions this client opened by handshake and by resumption.
    pub fn session_stats(&self) -> SessionStats {
        *self.inner.stats.lock().expect("lock")
    }

    /// The client's own id, sent as X-LDK-Instance.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// A session on server `i`: resumed from its last ticket when there is
    /// one (no login), else a full handshake.
    pub(crate) async fn open_channel(
        &self,
        i: usize,
        timeout: Duration,
    ) -> Result<Channel, Attempt> {
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
            .post(format!("{}{path}", spec.base_url()))
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
    pub(crate) async fn send(
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
            .post(format!("{}{PATH_REQUEST}", spec.base_url()))
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
        // 429: the instance's session table filled between our handshake
        // and this first request (a session counts from its first request):
        // a healthy instance at capacity, so another server may serve us.
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
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

    pub(crate) async fn set_channel(&self, ch: Channel) {
        let mut active = self.inner.active.lock().await;
        if active.is_none() {
            *active = Some(Arc::new(ch));
        }
    }

    pub(crate) async fn drop_channel(&self, ch: &Arc<Channel>) {
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
