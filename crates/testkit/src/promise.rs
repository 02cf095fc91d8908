//! The promise checker (issue 11): floatlm's hard promise, checked on what
//! clients were *told*, not on database rows.
//!
//! Every answer that tells a client it holds a lease — a `granted` login
//! answer (a replay with `replayed: true` too) or a heartbeat answer with
//! `alive: true` — is a **promise**, valid from that request's **send time**
//! `s` until `s + ttl_ms`. At no instant may more than N leases of a feature
//! (N = its licensed seats) carry an unexpired promise.
//!
//! A promise is carried from the moment it is *told*: the checker's interval
//! is `[r, s + ttl_ms)`, `r` the instant the answer arrived. The send time
//! fixes the end (the client's own deadline); it cannot fix the start,
//! because no server can keep a login that was sent while every seat was
//! promised from being granted a moment later, once a logout has freed one:
//! the login's send time lies before the logout's, its grant after it. With
//! send-time starts the checker reported exactly that (6 ms of "overlap"
//! between a logout sent at +1.814 s and a login sent at +1.808 s, answered
//! at +1.868 s) on a run with no bug in it. Every rule below still counts
//! from send times.
//!
//! This module owns three things:
//!
//! * [`Recorder`]: a thread-safe log of every request: client, instance,
//!   operation, send [`Instant`], receive [`Instant`] (or none) and the
//!   parsed answer.
//! * [`RecClient`]: a recording raw-protocol client (not `floatlm-client`):
//!   its own handshakes and envelopes, so a test can do what a buggy or
//!   unlucky client does — resend an old login with the same request id
//!   through another session or instance, heartbeat any lease anywhere,
//!   heartbeat and log out the same lease at the same moment.
//! * [`check`]: turns the log into promise intervals and runs a sweep line
//!   per feature.
//!
//! # How logouts end promises
//!
//! A client gives a lease ℓ up with a logout. For a logout of ℓ **sent** at
//! `s_L`:
//!
//! * every promise of ℓ from a request sent **before** `s_L` ends at `s_L`
//!   (it is cut, never lengthened);
//! * a request for ℓ sent while the logout is outstanding (at or after `s_L`,
//!   before its answer arrived) carries no promise: the client is giving ℓ
//!   up, and such answers race with the release;
//! * if the logout is never *answered* — no answer (timeout, transport
//!   error) or any answer other than `released` (an HTTP-level or sealed
//!   error) — ℓ is given up for good from `s_L`: no later answer for ℓ counts;
//! * if it was answered (`released`, true or false) at `r_L`, a request for
//!   ℓ sent at or after `r_L` is a fresh request, and a `granted`/`alive`
//!   answer to it is a full promise (the bug class "heartbeat after logout
//!   answered alive").
//!
//! Force releases by an operator end nothing: the holder is not told. They
//! are recorded (as [`Op::ForceRelease`]) only so reports show them. The
//! same holds for a `release` sent by another session of the lease's own
//! identity ([`Op::Release`], `floatlm release`): the holder's client may
//! still be running on its promise, so it ends nothing either; `mine`
//! ([`Op::Mine`]) only reads.
//!
//! Lease ids are opaque strings. A lease belongs to the feature named by the
//! `granted` answer that named it; a heartbeat `alive` for a lease never seen
//! granted, or a lease granted under two features, is itself a failure.
//!
//! Intervals are half-open `[r, s + ttl)`: at equal instants the sweep
//! handles ends before starts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floatlm_protocol::envelope::{self, Binding, Direction};
use floatlm_protocol::handshake::ClientHandshake;
use floatlm_protocol::keys::SessionKeys;
use floatlm_protocol::messages::{LeaseStatus, Request, Response};
use floatlm_protocol::{HEADER_INSTANCE, HEADER_SESSION, PATH_HANDSHAKE, PATH_REQUEST};

use super::{
    admin_cli, cluster_instance, created_credential, floatlm_ok, Kind, ServerProc, TestDb,
    CLUSTER_TOKEN,
};

/// How long the recording client waits for any HTTP answer; past it the
/// request is recorded as unanswered.
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

// ------------------------------------------------------------------- the log

/// What a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A login with a request id never sent before.
    Login {
        feature: String,
        request_id: String,
    },
    /// The same login again (same request id), later or elsewhere.
    LoginResend {
        feature: String,
        request_id: String,
    },
    Heartbeat {
        leases: Vec<String>,
    },
    Logout {
        lease: String,
    },
    /// An operator's force release (admin API); it ends no promise.
    ForceRelease {
        lease: String,
    },
    /// The leases of the client's identity (`mine`); promises nothing.
    Mine,
    /// A `release` of a lease (seat reference or lease id) of the client's
    /// identity, typically held by another session; it ends no promise.
    Release {
        lease: String,
    },
}

impl Op {
    /// Every lease this request names.
    pub fn leases(&self) -> Vec<&str> {
        match self {
            Op::Heartbeat { leases } => leases.iter().map(String::as_str).collect(),
            Op::Logout { lease } | Op::ForceRelease { lease } | Op::Release { lease } => {
                vec![lease.as_str()]
            }
            Op::Login { .. } | Op::LoginResend { .. } | Op::Mine => Vec::new(),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Login {
                feature,
                request_id,
            } => write!(f, "login {feature} rid={request_id}"),
            Op::LoginResend {
                feature,
                request_id,
            } => write!(f, "login-resend {feature} rid={request_id}"),
            Op::Heartbeat { leases } => write!(f, "heartbeat [{}]", leases.join(", ")),
            Op::Logout { lease } => write!(f, "logout {lease}"),
            Op::ForceRelease { lease } => write!(f, "force-release {lease} (operator)"),
            Op::Mine => write!(f, "mine"),
            Op::Release { lease } => write!(f, "release {lease} (own identity)"),
        }
    }
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Nothing: a timeout or a transport error (the text says which).
    None(String),
    /// An answer that is not a sealed response: HTTP status and body
    /// (envelope-level errors, admin API answers).
    Http(u16, String),
    /// The opened, parsed response.
    Sealed(Response),
}

impl Answer {
    /// A `granted` answer (for synthetic logs).
    pub fn granted(lease: &str, feature: &str, ttl_ms: u64, replayed: bool) -> Answer {
        Answer::Sealed(Response::Granted {
            lease: lease.into(),
            feature: feature.into(),
            ttl_ms,
            lease_gen: 0,
            replayed,
        })
    }

    /// A heartbeat answer: (lease, alive, ttl_ms) each.
    pub fn heartbeat(leases: &[(&str, bool, u64)]) -> Answer {
        Answer::Sealed(Response::Heartbeat {
            leases: leases
                .iter()
                .map(|(l, alive, ttl_ms)| LeaseStatus {
                    lease: l.to_string(),
                    alive: *alive,
                    ttl_ms: *ttl_ms,
                })
                .collect(),
        })
    }

    pub fn released(lease: &str, released: bool) -> Answer {
        Answer::Sealed(Response::Released {
            lease: lease.into(),
            released,
        })
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::None(why) => write!(f, "no answer ({why})"),
            Answer::Http(status, body) => {
                let body: String = body.chars().take(160).collect();
                write!(f, "HTTP {status} {body}")
            }
            Answer::Sealed(r) => match r {
                Response::Granted {
                    lease,
                    feature,
                    ttl_ms,
                    replayed,
                    ..
                } => write!(
                    f,
                    "granted {lease} ({feature}) ttl_ms={ttl_ms} replayed={replayed}"
                ),
                Response::Heartbeat { leases } => {
                    let each: Vec<String> = leases
                        .iter()
                        .map(|l| {
                            if l.alive {
                                format!("{} alive ttl_ms={}", l.lease, l.ttl_ms)
                            } else {
                                format!("{} dead", l.lease)
                            }
                        })
                        .collect();
                    write!(f, "heartbeat [{}]", each.join(", "))
                }
                Response::Released { lease, released } => {
                    write!(f, "released {lease}: {released}")
                }
                Response::Error {
                    code,
                    reason,
                    message,
                } => write!(
                    f,
                    "error {code:?}/{}: {message}",
                    reason.as_deref().unwrap_or("-")
                ),
                Response::Info { .. } => write!(f, "info"),
                Response::Mine { leases, more } => {
                    let each: Vec<&str> = leases.iter().map(|l| l.lease.as_str()).collect();
                    write!(f, "mine [{}] +{more}", each.join(", "))
                }
                Response::SeatReleased {
                    lease,
                    released,
                    free_at_ms,
                } => write!(
                    f,
                    "seat released {lease}: {released} (free at {})",
                    free_at_ms.map_or("-".into(), |t| t.to_string())
                ),
            },
        }
    }
}

/// One request and what became of it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Order of recording (completion order), unique per recorder.
    pub id: usize,
    pub client: String,
    /// The instance it was sent to (its id, or its address).
    pub instance: String,
    pub op: Op,
    /// Taken just before the request left (after sealing).
    pub sent: Instant,
    /// Taken when the whole answer was read; `None` when none came.
    pub received: Option<Instant>,
    pub answer: Answer,
}

impl Record {
    fn response(&self) -> Option<&Response> {
        match (&self.answer, self.received) {
            (Answer::Sealed(r), Some(_)) => Some(r),
            _ => None,
        }
    }

    /// The lease of a `granted` answer.
    pub fn granted(&self) -> Option<&str> {
        match self.response() {
            Some(Response::Granted { lease, .. }) => Some(lease),
            _ => None,
        }
    }

    /// Whether the answer was `granted` with `replayed: true`.
    pub fn replayed(&self) -> bool {
        matches!(
            self.response(),
            Some(Response::Granted { replayed: true, .. })
        )
    }

    /// `alive` of `lease` in a heartbeat answer that names it.
    pub fn alive(&self, lease: &str) -> Option<bool> {
        match self.response() {
            Some(Response::Heartbeat { leases }) => {
                leases.iter().find(|l| l.lease == lease).map(|l| l.alive)
            }
            _ => None,
        }
    }

    /// The seat references of a `mine` answer.
    pub fn mine(&self) -> Vec<String> {
        match self.response() {
            Some(Response::Mine { leases, .. }) => leases.iter().map(|l| l.lease.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// `released` of a `release` answer.
    pub fn seat_released(&self) -> Option<bool> {
        match self.response() {
            Some(Response::SeatReleased { released, .. }) => Some(*released),
            _ => None,
        }
    }

    /// `released` of a logout answer.
    pub fn released(&self) -> Option<bool> {
        match self.response() {
            Some(Response::Released { released, .. }) => Some(*released),
            _ => None,
        }
    }

    /// (lease, ttl_ms) of every promise the answer makes, before any logout
    /// is taken into account.
    pub fn promises(&self) -> Vec<(&str, u64)> {
        match self.response() {
            Some(Response::Granted { lease, ttl_ms, .. }) => vec![(lease.as_str(), *ttl_ms)],
            Some(Response::Heartbeat { leases }) => leases
                .iter()
                .filter(|l| l.alive)
                .map(|l| (l.lease.as_str(), l.ttl_ms))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether the request names `lease`, in the request or in the answer.
    pub fn names(&self, lease: &str) -> bool {
        self.op.leases().contains(&lease) || self.promises().iter().any(|(l, _)| *l == lease)
    }

    /// One line for reports, times relative to `t0`.
    pub fn line(&self, t0: Instant) -> String {
        format!(
            "#{} {} {} via {} sent {} answered {} -> {}",
            self.id,
            self.client,
            self.op,
            self.instance,
            rel(t0, self.sent),
            self.received.map_or("never".to_string(), |r| rel(t0, r)),
            self.answer
        )
    }
}

/// `+1.2345s` after `t0` (or `-0.5000s` before it): to a tenth of a
/// millisecond, so that short intervals do not print as empty.
pub fn rel(t0: Instant, t: Instant) -> String {
    if t >= t0 {
        format!("+{:.4}s", (t - t0).as_secs_f64())
    } else {
        format!("-{:.4}s", (t0 - t).as_secs_f64())
    }
}

/// The shared, thread-safe request log.
pub struct Recorder {
    t0: Instant,
    records: Mutex<Vec<Record>>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            t0: Instant::now(),
            records: Mutex::new(Vec::new()),
        })
    }

    /// The instant reports count from.
    pub fn t0(&self) -> Instant {
        self.t0
    }

    /// `t0 + ms`: instants for synthetic logs.
    pub fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Appends one request; returns it with its id.
    pub fn log(
        &self,
        client: &str,
        instance: &str,
        op: Op,
        sent: Instant,
        received: Option<Instant>,
        answer: Answer,
    ) -> Record {
        let mut all = self.records.lock().expect("recorder lock");
        let r = Record {
            id: all.len(),
            client: client.into(),
            instance: instance.into(),
            op,
            sent,
            received,
            answer,
        };
        all.push(r.clone());
        r
    }

    /// Synthetic logs: `sent_ms`/`received_ms` after `t0`.
    pub fn log_ms(
        &self,
        client: &str,
        op: Op,
        sent_ms: u64,
        received_ms: Option<u64>,
        answer: Answer,
    ) -> Record {
        self.log(
            client,
            "x",
            op,
            self.at(sent_ms),
            received_ms.map(|ms| self.at(ms)),
            answer,
        )
    }

    /// Every record so far, by send time.
    pub fn records(&self) -> Vec<Record> {
        let mut all = self.records.lock().expect("recorder lock").clone();
        all.sort_by_key(|r| (r.sent, r.id));
        all
    }

    /// Runs [`check`] on everything recorded so far.
    pub fn check(
        &self,
        seats: &BTreeMap<String, usize>,
    ) -> Result<BTreeMap<String, usize>, CheckFailure> {
        check(&self.records(), self.t0, seats)
    }

    /// Every record, one line each, by send time.
    pub fn dump(&self) -> String {
        self.records()
            .iter()
            .map(|r| format!("{}\n", r.line(self.t0)))
            .collect()
    }

    /// Prints [`Recorder::dump`] when `FLOATLM_PROMISE_LOG` is set.
    pub fn dump_if_asked(&self) {
        if std::env::var_os("FLOATLM_PROMISE_LOG").is_some() {
            eprintln!("every request:\n{}", self.dump());
        }
    }

    /// How many records of each operation kind were answered / unanswered.
    pub fn summary(&self) -> String {
        let mut by: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
        for r in self.records.lock().expect("recorder lock").iter() {
            let k = match r.op {
                Op::Login { .. } => "login",
                Op::LoginResend { .. } => "login-resend",
                Op::Heartbeat { .. } => "heartbeat",
                Op::Logout { .. } => "logout",
                Op::ForceRelease { .. } => "force-release",
                Op::Mine => "mine",
                Op::Release { .. } => "release",
            };
            let e = by.entry(k).or_default();
            if r.received.is_some() {
                e.0 += 1
            } else {
                e.1 += 1
            }
        }
        by.iter()
            .map(|(k, (a, n))| format!("{k}: {a} answered, {n} unanswered"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

// --------------------------------------------------------------- the checker

/// One promise after the logout rules.
#[derive(Debug, Clone)]
pub struct Promise {
    pub lease: String,
    pub feature: String,
    /// When the answer arrived (the promise was told).
    pub start: Instant,
    /// Send time + ttl_ms, or the send time of the logout that cut it.
    pub end: Instant,
    /// Index into the checked records of the request that made it.
    pub made_by: usize,
    /// The logout that cut it short, if any (index into the records).
    pub cut_by: Option<usize>,
}

/// The first instant a feature had more leases with unexpired promises than
/// seats.
#[derive(Debug, Clone)]
pub struct Violation {
    pub feature: String,
    pub seats: usize,
    /// Since the recorder's `t0`.
    pub at: Duration,
    /// The leases with an unexpired promise at that instant.
    pub leases: Vec<String>,
    /// The most leases at once over the whole run, and how many separate
    /// times the count went above `seats`.
    pub peak: usize,
    pub episodes: usize,
}

/// Why the check failed, with a report readable from CI output.
pub struct CheckFailure {
    pub violations: Vec<Violation>,
    /// Failures that are not overlaps: a heartbeat `alive` for a lease never
    /// granted, a lease granted under two features, a feature of unknown size.
    pub anomalies: Vec<String>,
    pub report: String,
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report)
    }
}

impl fmt::Debug for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report)
    }
}

/// What became of a promise-making answer for one lease.
enum Verdict {
    Counted(usize),
    DuringLogout(usize),
    GivenUp(usize),
}

/// Checks the promise on `records` (any order); `seats` gives N per feature.
/// Returns the most leases with unexpired promises at once per feature.
pub fn check(
    records: &[Record],
    t0: Instant,
    seats: &BTreeMap<String, usize>,
) -> Result<BTreeMap<String, usize>, CheckFailure> {
    let mut records = records.to_vec();
    records.sort_by_key(|r| (r.sent, r.id));
    let mut anomalies = Vec::new();

    // Which feature each lease belongs to: the granted answers that named it.
    let mut feature_of: HashMap<&str, (&str, usize)> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        if let Some(Response::Granted { lease, feature, .. }) = r.response() {
            match feature_of.get(lease.as_str()) {
                Some((f, first)) if *f != feature.as_str() => anomalies.push(format!(
                    "lease {lease} granted as feature '{f}' by {} and as '{feature}' by {}",
                    records[*first].line(t0),
                    r.line(t0)
                )),
                Some(_) => {}
                None => {
                    feature_of.insert(lease, (feature, i));
                }
            }
        }
    }

    // Logouts per lease.
    struct Logout {
        sent: Instant,
        /// When a `released` answer arrived; `None`: given up for good.
        answered: Option<Instant>,
        index: usize,
    }
    let mut logouts: HashMap<&str, Vec<Logout>> = HashMap::new();
    for (index, r) in records.iter().enumerate() {
        if let Op::Logout { lease } = &r.op {
            logouts.entry(lease.as_str()).or_default().push(Logout {
                sent: r.sent,
                answered: r.released().and(r.received),
                index,
            });
        }
    }

    // Promises, with the logout rules applied.
    let mut promises: Vec<Promise> = Vec::new();
    let mut verdicts: HashMap<(usize, &str), Verdict> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        for (lease, ttl_ms) in r.promises() {
            let Some((feature, _)) = feature_of.get(lease) else {
                anomalies.push(format!(
                    "{} says lease {lease} is alive, but no answer ever granted {lease}",
                    r.line(t0)
                ));
                continue;
            };
            // Told at `start` (an answer with a promise was received); the
            // logout rules go by the send time.
            let sent = r.sent;
            let start = r.received.expect("a promise was received");
            let mut end = sent + Duration::from_millis(ttl_ms);
            let mut cut_by = None;
            let mut void = None;
            for l in logouts.get(lease).map_or(&[][..], |v| v) {
                if sent < l.sent {
                    if end > l.sent {
                        end = l.sent;
                        cut_by = Some(l.index);
                    }
                } else {
                    match l.answered {
                        None => void = Some(Verdict::GivenUp(l.index)),
                        Some(r_l) if sent < r_l => void = Some(Verdict::DuringLogout(l.index)),
                        Some(_) => {}
                    }
                }
                if void.is_some() {
                    break;
                }
            }
            if let Some(v) = void {
                verdicts.insert((i, lease), v);
                continue;
            }
            verdicts.insert((i, lease), Verdict::Counted(promises.len()));
            promises.push(Promise {
                lease: lease.to_string(),
                feature: feature.to_string(),
                start,
                end,
                made_by: i,
                cut_by,
            });
        }
    }

    // Sweep line per feature: at equal instants ends (0) before starts (1).
    let mut max = BTreeMap::new();
    let mut violations = Vec::new();
    let mut features: BTreeSet<&str> = promises.iter().map(|p| p.feature.as_str()).collect();
    features.extend(seats.keys().map(String::as_str));
    for feature in features {
        let Some(&n) = seats.get(feature) else {
            anomalies.push(format!(
                "feature '{feature}' was granted but its seat count was not given to the checker"
            ));
            continue;
        };
        let mut events: Vec<(Instant, u8, usize)> = Vec::new();
        for (i, p) in promises.iter().enumerate() {
            if p.feature == feature && p.end > p.start {
                events.push((p.start, 1, i));
                events.push((p.end, 0, i));
            }
        }
        events.sort();
        let mut active: BTreeSet<usize> = BTreeSet::new();
        let mut per_lease: HashMap<&str, usize> = HashMap::new();
        let (mut distinct, mut peak, mut episodes) = (0usize, 0usize, 0usize);
        let mut first: Option<(Instant, BTreeSet<usize>)> = None;
        for (t, kind, i) in events {
            let lease = promises[i].lease.as_str();
            let c = per_lease.entry(lease).or_default();
            if kind == 0 {
                active.remove(&i);
                *c -= 1;
                if *c == 0 {
                    distinct -= 1;
                }
            } else {
                active.insert(i);
                *c += 1;
                if *c == 1 {
                    distinct += 1;
                    if distinct == n + 1 {
                        episodes += 1;
                        if first.is_none() {
                            first = Some((t, active.clone()));
                        }
                    }
                }
                peak = peak.max(distinct);
            }
        }
        max.insert(feature.to_string(), peak);
        if let Some((t, set)) = first {
            let leases: BTreeSet<String> = set.iter().map(|i| promises[*i].lease.clone()).collect();
            violations.push((
                Violation {
                    feature: feature.to_string(),
                    seats: n,
                    at: t.saturating_duration_since(t0),
                    leases: leases.into_iter().collect(),
                    peak,
                    episodes,
                },
                set,
            ));
        }
    }

    if violations.is_empty() && anomalies.is_empty() {
        return Ok(max);
    }

    // The report: each violation with the promises in force and the history
    // of every lease involved, then the anomalies.
    let mut out = String::new();
    let describe = |i: usize, lease: &str| -> String {
        match verdicts.get(&(i, lease)) {
            Some(Verdict::Counted(p)) => {
                let p = &promises[*p];
                let cut = p.cut_by.map_or(String::new(), |l| {
                    format!(", cut by logout #{}", records[l].id)
                });
                format!(
                    "  => promise [{}, {}){cut}",
                    rel(t0, p.start),
                    rel(t0, p.end)
                )
            }
            Some(Verdict::DuringLogout(l)) => format!(
                "  => no promise: sent while logout #{} was outstanding",
                records[*l].id
            ),
            Some(Verdict::GivenUp(l)) => format!(
                "  => no promise: {lease} was given up by unanswered logout #{}",
                records[*l].id
            ),
            None => String::new(),
        }
    };
    for (v, set) in &violations {
        let _ = writeln!(
            out,
            "PROMISE BROKEN: feature '{}' has {} seat(s), but at t={} {} leases carried an unexpired promise ({} time(s) above {} in the run, peak {}):",
            v.feature,
            v.seats,
            rel(t0, t0 + v.at),
            v.leases.len(),
            v.episodes,
            v.seats,
            v.peak
        );
        for lease in &v.leases {
            let _ = writeln!(out, "  lease {lease}, promised by:");
            for i in set.iter().filter(|i| promises[**i].lease == *lease) {
                let p = &promises[*i];
                let _ = writeln!(
                    out,
                    "    [{}, {}) from {}",
                    rel(t0, p.start),
                    rel(t0, p.end),
                    records[p.made_by].line(t0)
                );
            }
        }
        for lease in &v.leases {
            let history: Vec<usize> = (0..records.len())
                .filter(|i| records[*i].names(lease))
                .collect();
            let _ = writeln!(
                out,
                "  history of {lease} ({} requests name it):",
                history.len()
            );
            // Long histories: the 30 requests up to the violation and 10 after.
            let at = t0 + v.at;
            let upto = history.partition_point(|i| records[*i].sent <= at);
            let (from, to) = (upto.saturating_sub(30), (upto + 10).min(history.len()));
            if from > 0 {
                let _ = writeln!(out, "    … {from} earlier requests left out");
            }
            for &i in &history[from..to] {
                let _ = writeln!(out, "    {}{}", records[i].line(t0), describe(i, lease));
            }
            if to < history.len() {
                let _ = writeln!(out, "    … {} later requests left out", history.len() - to);
            }
        }
    }
    for a in &anomalies {
        let _ = writeln!(out, "CHECKER FAILURE: {a}");
    }
    let _ = writeln!(
        out,
        "peak leases with unexpired promises per feature: {max:?}"
    );
    Err(CheckFailure {
        violations: violations.into_iter().map(|(v, _)| v).collect(),
        anomalies,
        report: out,
    })
}

/// Direct assertions collected alongside the checker, so one failing run
/// shows every broken expectation and the checker's report together.
pub struct Findings {
    failures: Vec<String>,
}

impl Default for Findings {
    fn default() -> Self {
        Self::new()
    }
}

impl Findings {
    pub fn new() -> Findings {
        Findings {
            failures: Vec::new(),
        }
    }

    /// Notes a broken expectation unless `ok`.
    pub fn expect(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }

    /// Runs the checker on `rec`; panics with every broken expectation and
    /// the checker's report if anything failed.
    pub fn finish(self, rec: &Recorder, seats: &BTreeMap<String, usize>) {
        rec.dump_if_asked();
        let checked = rec.check(seats);
        if let (true, Ok(peak)) = (self.failures.is_empty(), &checked) {
            eprintln!("promise held; peak per feature {peak:?}; {}", rec.summary());
            return;
        }
        let mut msg = String::new();
        for f in &self.failures {
            let _ = writeln!(msg, "EXPECTATION FAILED: {f}");
        }
        match checked {
            Ok(max) => {
                let _ = writeln!(msg, "the checker held (peak per feature {max:?})");
            }
            Err(e) => msg.push_str(&e.report),
        }
        let _ = writeln!(msg, "requests: {}", rec.summary());
        panic!("\n{msg}");
    }
}

// ------------------------------------------------------ the recording client

/// Where a request goes: an instance's name (for reports) and address.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub addr: String,
    /// The instance's admin listener, when known.
    pub admin: Option<String>,
}

impl Target {
    pub fn of(p: &ServerProc) -> Target {
        Target {
            name: if p.instance.is_empty() {
                p.licensing.clone()
            } else {
                p.instance.clone()
            },
            addr: p.licensing.clone(),
            admin: Some(p.admin.clone()),
        }
    }
}

struct Session {
    id: String,
    keys: SessionKeys,
    seq: AtomicU64,
}

/// A raw-protocol client that records every request in a [`Recorder`].
/// Holds one session per instance address, made on first use.
pub struct RecClient {
    pub name: String,
    identity_id: String,
    secret: String,
    http: reqwest::Client,
    rec: Arc<Recorder>,
    sessions: tokio::sync::Mutex<HashMap<String, Arc<Session>>>,
    next_rid: AtomicU64,
    /// Request id -> feature of every login sent.
    logins: Mutex<HashMap<String, String>>,
}

impl RecClient {
    /// `credential` is `ID:SECRET` (what `floatlm admin identity create`
    /// prints before the `@`). `name` goes in X-LDK-Instance and request ids.
    pub fn new(rec: &Arc<Recorder>, name: &str, credential: &str) -> RecClient {
        let (id, secret) = credential
            .split_once('@')
            .map_or(credential, |(c, _)| c)
            .split_once(':')
            .expect("credential is ID:SECRET");
        RecClient {
            name: name.into(),
            identity_id: id.into(),
            secret: secret.into(),
            http: reqwest::Client::builder()
                .timeout(HTTP_TIMEOUT)
                .build()
                .expect("http client"),
            rec: rec.clone(),
            sessions: tokio::sync::Mutex::new(HashMap::new()),
            next_rid: AtomicU64::new(1),
            logins: Mutex::new(HashMap::new()),
        }
    }

    /// Drops the session with `at`, so the next request there handshakes anew.
    pub async fn forget_session(&self, at: &Target) {
        self.sessions.lock().await.remove(&at.addr);
    }

    async fn session(&self, at: &Target) -> Result<Arc<Session>, String> {
        let mut all = self.sessions.lock().await;
        if let Some(s) = all.get(&at.addr) {
            return Ok(s.clone());
        }
        let (hs, hello) = ClientHandshake::start(&self.identity_id, self.secret.as_bytes(), None)
            .map_err(|e| e.to_string())?;
        let reply = self
            .http
            .post(format!("http://{}{PATH_HANDSHAKE}", at.addr))
            .body(hello)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = reply.status();
        let body = reply.bytes().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!(
                "handshake HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let (keys, payload) = hs.finish(&body).map_err(|e| e.to_string())?;
        if let Some(why) = payload.refused {
            return Err(format!("identity refused: {why}"));
        }
        let s = Arc::new(Session {
            id: payload.session,
            keys,
            seq: AtomicU64::new(0),
        });
        all.insert(at.addr.clone(), s.clone());
        Ok(s)
    }

    /// Seals `req`, posts it to `at` and records it as `op`.
    async fn send(&self, at: &Target, op: Op, req: Request) -> Record {
        let session = match self.session(at).await {
            Ok(s) => s,
            Err(e) => {
                // Never sent: recorded as unanswered, which is what the
                // client sees.
                let now = Instant::now();
                return self.rec.log(
                    &self.name,
                    &at.name,
                    op,
                    now,
                    None,
                    Answer::None(format!("no session: {e}")),
                );
            }
        };
        let seq = session.seq.fetch_add(1, Ordering::Relaxed);
        let binding = Binding {
            method: "POST",
            path: PATH_REQUEST,
            instance: &self.name,
            session: &session.id,
        };
        let body = envelope::seal(
            &session.keys.c2s,
            Direction::ClientToServer,
            seq,
            &binding,
            &serde_json::to_vec(&req).expect("request json"),
        );
        let sent = Instant::now();
        let result = async {
            let r = self
                .http
                .post(format!("http://{}{PATH_REQUEST}", at.addr))
                .header(HEADER_SESSION, &session.id)
                .header(HEADER_INSTANCE, &self.name)
                .body(body)
                .send()
                .await?;
            let status = r.status().as_u16();
            Ok::<_, reqwest::Error>((status, r.bytes().await?))
        }
        .await;
        let received = Instant::now();
        let (received, answer) = match result {
            Err(e) => (None, Answer::None(e.to_string())),
            Ok((200, bytes)) => {
                let opened = envelope::open(
                    &session.keys.s2c,
                    Direction::ServerToClient,
                    &binding,
                    &bytes,
                )
                .map_err(|e| e.to_string())
                .and_then(|(_, pt)| {
                    serde_json::from_slice::<Response>(&pt).map_err(|e| e.to_string())
                });
                match opened {
                    Ok(resp) => (Some(received), Answer::Sealed(resp)),
                    Err(e) => (
                        Some(received),
                        Answer::Http(200, format!("unreadable answer: {e}")),
                    ),
                }
            }
            Ok((status, bytes)) => {
                if status == 401 {
                    self.forget_session(at).await;
                }
                (
                    Some(received),
                    Answer::Http(status, String::from_utf8_lossy(&bytes).into_owned()),
                )
            }
        };
        self.rec
            .log(&self.name, &at.name, op, sent, received, answer)
    }

    /// A login with a new request id (`NAME:n`).
    pub async fn login(&self, at: &Target, feature: &str) -> Record {
        let rid = format!(
            "{}:{}",
            self.name,
            self.next_rid.fetch_add(1, Ordering::Relaxed)
        );
        self.login_with(at, feature, &rid).await
    }

    /// A login with a chosen request id (recorded as a resend if this client
    /// sent it before).
    pub async fn login_with(&self, at: &Target, feature: &str, request_id: &str) -> Record {
        let before = self
            .logins
            .lock()
            .expect("lock")
            .insert(request_id.into(), feature.into());
        let (feature, request_id) = (feature.to_string(), request_id.to_string());
        let op = if before.is_some() {
            Op::LoginResend {
                feature: feature.clone(),
                request_id: request_id.clone(),
            }
        } else {
            Op::Login {
                feature: feature.clone(),
                request_id: request_id.clone(),
            }
        };
        let req = Request::Login {
            feature,
            request_id,
            auth: Default::default(),
        };
        self.send(at, op, req).await
    }

    /// Resends an earlier login of this client exactly (same request id).
    pub async fn resend_login(&self, at: &Target, request_id: &str) -> Record {
        let feature = self
            .logins
            .lock()
            .expect("lock")
            .get(request_id)
            .cloned()
            .unwrap_or_else(|| panic!("{} never sent request id {request_id}", self.name));
        self.login_with(at, &feature, request_id).await
    }

    pub async fn heartbeat(&self, at: &Target, leases: &[String]) -> Record {
        let op = Op::Heartbeat {
            leases: leases.to_vec(),
        };
        let req = Request::Heartbeat {
            leases: leases.to_vec(),
        };
        self.send(at, op, req).await
    }

    pub async fn logout(&self, at: &Target, lease: &str) -> Record {
        let op = Op::Logout {
            lease: lease.into(),
        };
        let req = Request::Logout {
            lease: lease.into(),
        };
        self.send(at, op, req).await
    }

    /// The leases of this client's identity, by seat reference (`mine`).
    pub async fn mine(&self, at: &Target) -> Record {
        self.send(at, Op::Mine, Request::Mine {}).await
    }

    /// Releases a lease of this client's identity (`release`): its seat
    /// reference or its lease id.
    pub async fn release(&self, at: &Target, lease: &str) -> Record {
        let op = Op::Release {
            lease: lease.into(),
        };
        let req = Request::Release {
            lease: lease.into(),
        };
        self.send(at, op, req).await
    }

    /// A heartbeat of `lease` to `hb_at` and a logout of it to `logout_at`,
    /// sent at the same moment; returns (heartbeat, logout).
    pub async fn heartbeat_and_logout(
        &self,
        hb_at: &Target,
        logout_at: &Target,
        lease: &str,
    ) -> (Record, Record) {
        // Sessions first, so neither request waits for a handshake.
        let _ = self.session(hb_at).await;
        let _ = self.session(logout_at).await;
        let leases = [lease.to_string()];
        tokio::join!(
            self.heartbeat(hb_at, &leases),
            self.logout(logout_at, lease)
        )
    }
}

/// An operator's force release of `lease` through `at`'s admin API,
/// recorded (it ends no promise).
pub async fn force_release(rec: &Recorder, at: &Target, lease: &str) -> Record {
    let admin = at.admin.as_deref().expect("target with an admin address");
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .expect("http client");
    let sent = Instant::now();
    let r = http
        .delete(format!("http://{admin}/admin/v1/leases/{lease}"))
        .bearer_auth(CLUSTER_TOKEN)
        .send()
        .await;
    let (received, answer) = match r {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            (Some(Instant::now()), Answer::Http(status, body))
        }
        Err(e) => (None, Answer::None(e.to_string())),
    };
    rec.log(
        "operator",
        &at.name,
        Op::ForceRelease {
            lease: lease.into(),
        },
        sent,
        received,
        answer,
    )
}

/// The live leases the admin API of `at` lists.
pub async fn live_leases(at: &Target) -> Vec<String> {
    let admin = at.admin.as_deref().expect("target with an admin address");
    let v: serde_json::Value = match reqwest::Client::new()
        .get(format!("http://{admin}/admin/v1/leases"))
        .bearer_auth(CLUSTER_TOKEN)
        .timeout(HTTP_TIMEOUT)
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => return Vec::new(),
    };
    v["leases"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["lease"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

// --------------------------------------------------------------- the cluster

/// One `floatlm serve` of a [`PromiseCluster`]: its instance id and its
/// `FLOATLM_LEASE_TTL` / `FLOATLM_LEASE_HOLD` (each at least 5 s; the hold
/// between the TTL and 10 × the TTL, see src/config/).
#[derive(Debug, Clone, Copy)]
pub struct InstanceSpec {
    pub id: &'static str,
    pub lease_ttl: &'static str,
    pub lease_hold: &'static str,
}

impl InstanceSpec {
    pub const fn new(
        id: &'static str,
        lease_ttl: &'static str,
        lease_hold: &'static str,
    ) -> InstanceSpec {
        InstanceSpec {
            id,
            lease_ttl,
            lease_hold,
        }
    }
}

/// Instances on one fresh database, a signed license and identities: a
/// MariaDB database shared by any number of instances, or an SQLite file
/// under one instance (SQLite is single-node).
/// Fields drop in order: servers stop before their database goes.
pub struct PromiseCluster {
    pub servers: Vec<ServerProc>,
    pub targets: Vec<Target>,
    /// `ID:SECRET` of each identity.
    pub credentials: Vec<String>,
    /// N per feature, for [`check`].
    pub seats: BTreeMap<String, usize>,
    /// The backend the instances share.
    pub kind: Kind,
    /// The MariaDB database; `None` on SQLite (its file is in `dir`).
    pub db: Option<TestDb>,
    pub dir: tempfile::TempDir,
}

impl PromiseCluster {
    /// Starts `instances` (in parallel) on one new MariaDB database, applies
    /// one license with `features` (name, seats) and creates `identities`.
    pub async fn start(
        instances: &[InstanceSpec],
        features: &[(&str, u32)],
        identities: usize,
    ) -> PromiseCluster {
        Self::start_on(Kind::Mysql, instances, features, identities).await
    }

    /// [`start`](Self::start) on `kind`: on SQLite, `instances` must be one
    /// instance, on a new SQLite file.
    pub async fn start_on(
        kind: Kind,
        instances: &[InstanceSpec],
        features: &[(&str, u32)],
        identities: usize,
    ) -> PromiseCluster {
        Self::start_full(kind, instances, &|_| Vec::new(), features, identities).await
    }

    /// [`PromiseCluster::start`] with more environment for every instance
    /// (`FLOATLM_CLUSTER_HEARTBEAT`, say).
    pub async fn start_with(
        instances: &[InstanceSpec],
        features: &[(&str, u32)],
        identities: usize,
        env: &[(&str, &str)],
    ) -> PromiseCluster {
        let all: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_with_env(instances, &|_| all.clone(), features, identities).await
    }

    /// [`start`](Self::start) with more environment for some instances:
    /// `env(spec)` is added to that instance's (libfaketime, say).
    pub async fn start_with_env(
        instances: &[InstanceSpec],
        env: &(dyn Fn(&InstanceSpec) -> Vec<(String, String)> + Sync),
        features: &[(&str, u32)],
        identities: usize,
    ) -> PromiseCluster {
        Self::start_full(Kind::Mysql, instances, env, features, identities).await
    }

    async fn start_full(
        kind: Kind,
        instances: &[InstanceSpec],
        env: &(dyn Fn(&InstanceSpec) -> Vec<(String, String)> + Sync),
        features: &[(&str, u32)],
        identities: usize,
    ) -> PromiseCluster {
        let dir = tempfile::tempdir().unwrap();
        let (db, url) = match kind {
            Kind::Mysql => {
                let db = TestDb::new().await;
                let url = db.url.clone();
                (Some(db), url)
            }
            Kind::Sqlite => {
                assert_eq!(
                    instances.len(),
                    1,
                    "SQLite is single-node: a promise cluster on SQLite has one instance"
                );
                let url = format!("sqlite://{}", dir.path().join("promise.db").display());
                (None, url)
            }
        };
        let s =
            PromiseServers::start_in(dir, instances, &|_| url.clone(), env, features, identities)
                .await;
        PromiseCluster {
            servers: s.servers,
            targets: s.targets,
            credentials: s.credentials,
            seats: s.seats,
            kind,
            db,
            dir: s.dir,
        }
    }

    /// The MariaDB database of a cluster started on MariaDB.
    pub fn db(&self) -> &TestDb {
        self.db
            .as_ref()
            .expect("this promise cluster runs on SQLite: it has no MariaDB database")
    }

    /// The URL of the database the instances share (either backend).
    pub fn db_url(&self) -> String {
        match &self.db {
            Some(db) => db.url.clone(),
            None => format!("sqlite://{}", self.dir.path().join("promise.db").display()),
        }
    }

    /// A recording client on identity `identity`.
    pub fn client(&self, rec: &Arc<Recorder>, name: &str, identity: usize) -> RecClient {
        RecClient::new(rec, name, &self.credentials[identity])
    }

    /// Each instance's log (for failure messages).
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("--- {} ---\n{}", s.instance, s.log()))
            .collect()
    }
}

/// Instances each on the database URL [`PromiseServers::start`] is given
/// for it (the nodes of a Galera cluster, say), with a license and
/// identities: [`PromiseCluster`] without a database of its own.
pub struct PromiseServers {
    pub servers: Vec<ServerProc>,
    pub targets: Vec<Target>,
    pub credentials: Vec<String>,
    pub seats: BTreeMap<String, usize>,
    pub dir: tempfile::TempDir,
}

impl PromiseServers {
    /// Starts `instances` in parallel, each on `db_url(spec)`, applies one
    /// license with `features` through the first and creates `identities`.
    pub async fn start(
        instances: &[InstanceSpec],
        db_url: &(dyn Fn(&InstanceSpec) -> String + Sync),
        env: &(dyn Fn(&InstanceSpec) -> Vec<(String, String)> + Sync),
        features: &[(&str, u32)],
        identities: usize,
    ) -> PromiseServers {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, instances, db_url, env, features, identities).await
    }

    /// [`start`](Self::start) with its files (license, instance data and
    /// logs) in `dir`.
    pub async fn start_in(
        dir: tempfile::TempDir,
        instances: &[InstanceSpec],
        db_url: &(dyn Fn(&InstanceSpec) -> String + Sync),
        env: &(dyn Fn(&InstanceSpec) -> Vec<(String, String)> + Sync),
        features: &[(&str, u32)],
        identities: usize,
    ) -> PromiseServers {
        let d = dir.path();
        let vdir = d.join("vendor").display().to_string();
        floatlm_ok(&["vendor", "keygen", "--out", &vdir]);
        let mut def = "license_id = \"PROMISE\"\nserial = 1\ncustomer = \"test\"\n".to_string();
        for (name, n) in features {
            def.push_str(&format!("[[feature]]\nname = \"{name}\"\nseats = {n}\n"));
        }
        let def_path = d.join("promise.toml");
        std::fs::write(&def_path, def).unwrap();
        let lic = d.join("promise.lic").display().to_string();
        floatlm_ok(&[
            "vendor",
            "sign",
            "--key",
            &format!("{vdir}/vendor.key"),
            &def_path.display().to_string(),
            "-o",
            &lic,
        ]);
        let pubkey = format!("{vdir}/vendor.pub");
        let servers: Vec<ServerProc> = std::thread::scope(|s| {
            let handles: Vec<_> = instances
                .iter()
                .map(|spec| {
                    let (db, pubkey) = (db_url(spec), &pubkey);
                    let more = env(spec);
                    s.spawn(move || {
                        let mut all = vec![
                            ("FLOATLM_LEASE_TTL", spec.lease_ttl),
                            ("FLOATLM_LEASE_HOLD", spec.lease_hold),
                        ];
                        all.extend(more.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                        cluster_instance(
                            d,
                            &db,
                            spec.id,
                            "127.0.0.1:0",
                            &["--vendor-key", pubkey],
                            &all,
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        admin_cli(&servers[0], &["apply", &lic]);
        let credentials = (0..identities)
            .map(|i| {
                let out = admin_cli(
                    &servers[0],
                    &["identity", "create", "--name", &format!("promise-{i}")],
                );
                created_credential(&out)
            })
            .collect();
        PromiseServers {
            targets: servers.iter().map(Target::of).collect(),
            servers,
            credentials,
            seats: features
                .iter()
                .map(|(f, n)| (f.to_string(), *n as usize))
                .collect(),
            dir,
        }
    }

    /// A recording client on identity `identity`.
    pub fn client(&self, rec: &Arc<Recorder>, name: &str, identity: usize) -> RecClient {
        RecClient::new(rec, name, &self.credentials[identity])
    }

    /// Each instance's log (for failure messages).
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("--- {} ---\n{}", s.instance, s.log()))
            .collect()
    }
}

// ------------------------------------------------------ usage records

/// Checks the usage records of a run (the database's `usage_events`, written
/// by the slot trigger in each seat change's own statement) against what
/// the checker saw: every lease a `granted` answer named has exactly one
/// `grant` row; no lease has two grants or two endings, nor an ending
/// before its grant; and the leases' in-use intervals from the rows never
/// overlap beyond each feature's seats. Grants whose answers were lost may
/// have rows the checker never saw (they were committed): those are fine.
pub async fn usage_consistent(
    db_url: &str,
    records: &[Record],
    seats: &BTreeMap<String, usize>,
) -> Result<usize, String> {
    use floatlm::domain::seats::LeaseRef;
    use floatlm::domain::usage::{report, UsageBy, UsageEvent};
    let storage = super::open_storage(db_url).await;
    let from = chrono::DateTime::<chrono::Utc>::from_timestamp(0, 0).unwrap();
    let to = chrono::Utc::now() + chrono::Duration::days(1);
    let events: Vec<UsageEvent> = storage
        .usage_window(from, to, 10_000_000)
        .await
        .map_err(|e| format!("cannot read usage_events: {e}"))?;
    let mut grants: HashMap<(i64, i64, i64, i64), Vec<&UsageEvent>> = HashMap::new();
    let mut ends: HashMap<(i64, i64, i64, i64), Vec<&UsageEvent>> = HashMap::new();
    for e in &events {
        let Some(l) = e.lease else { continue };
        match e.event.as_str() {
            "grant" => grants.entry(l).or_default().push(e),
            "release" | "expiry" | "force_release" => ends.entry(l).or_default().push(e),
            other => return Err(format!("unknown usage event '{other}' for lease {l:?}")),
        }
    }
    let mut problems = Vec::new();
    let seen: BTreeSet<&str> = records.iter().filter_map(|r| r.granted()).collect();
    for lease in &seen {
        let l: LeaseRef = lease
            .parse()
            .map_err(|e| format!("granted lease id {lease}: {e}"))?;
        let key = (l.feature_id, l.slot_no, l.lease_gen, l.nonce);
        let n = grants.get(&key).map_or(0, Vec::len);
        if n != 1 {
            problems.push(format!("lease {lease} was granted but has {n} grant rows"));
        }
    }
    for (l, g) in &grants {
        if g.len() > 1 {
            problems.push(format!("lease {l:?} has {} grant rows", g.len()));
        }
    }
    for (l, e) in &ends {
        if e.len() > 1 {
            problems.push(format!(
                "lease {l:?} ended {} times: {:?}",
                e.len(),
                e.iter().map(|x| &x.event).collect::<Vec<_>>()
            ));
        }
        match grants.get(l) {
            None => problems.push(format!(
                "lease {l:?} ended ({}) but was never granted",
                e[0].event
            )),
            Some(g) if e[0].at < g[0].at => problems.push(format!(
                "lease {l:?} ended at {} before its grant at {}",
                e[0].at, g[0].at
            )),
            _ => {}
        }
    }
    let now = chrono::Utc::now();
    for line in report(&events, from, now, now, UsageBy::Feature) {
        let n = seats.get(&line.key).copied().unwrap_or(0);
        if line.peak_concurrency as usize > n {
            problems.push(format!(
                "the usage rows of '{}' show {} leases in use at once; it has {n} seats",
                line.key, line.peak_concurrency
            ));
        }
    }
    if problems.is_empty() {
        Ok(events.len())
    } else {
        Err(problems.join("\n"))
    }
}
