//! Issue 11: the database dies under a running cluster.
//!
//! Two `floatlm serve` instances share a database on a MariaDB server of
//! the test's own (never the shared one); a feature has 3 seats, the lease
//! TTL is 10 s. Two clients hold a seat each, with heartbeats. The server is
//! SIGKILLed for 6 s (less than the TTL) and restarted, then SIGKILLed for
//! 13 s (more than the TTL) and restarted. floatlm itself is never
//! restarted. What must hold:
//!
//! * while the database is down, a login gets an error that says the
//!   license server's database is unavailable, fast (well under the
//!   client's 5 s request timeout), not a client timeout;
//! * at no time more valid seats than licensed: counted over every seat
//!   handle of every client, and checked against the admin API's live leases
//!   after each recovery;
//! * everything recovers once MariaDB is back: holders whose promise did
//!   not run out keep their seats (same lease), new logins succeed, healthz
//!   answers 503 while the database is down and 200 within ~2 s after, even
//!   though the key canary and integrity checks (every second here) failed
//!   to read the database while it was down (issue 12: a canary check that
//!   met the outage used to hold healthz at 503 until its next run, 30 s).
//!
//! The test records every observation and checks every requirement before
//! failing, so one run shows all that is wrong.

use floatlm_client::{Client, ClientError, HandleState, Options, SeatHandle};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::own_mariadb::OwnMariaDb;
use testkit::{admin_cli, cli_license, cluster_instance, created_credential, ServerProc};

const FEATURE: &str = "cad";
const SEATS: usize = 3;
const TTL: &str = "10s";
const SHORT_OUTAGE: Duration = Duration::from_secs(6);
const LONG_OUTAGE: Duration = Duration::from_secs(13);
/// "Fast": well inside the client's default request timeout (5 s). A login
/// caught by the kill waits for the instance to notice (its pool's 1 s
/// acquire timeout, or the next 0.5 s probe) and the library then asks its
/// servers again once before it reports `Unavailable` (measured 1.1-3.0 s on
/// the 2-core CI machine).
const FAST: Duration = Duration::from_millis(3500);
/// The instances' `integrity_interval` (key canary and integrity checks):
/// short, so that the checks run during every outage.
const INTEGRITY_EVERY: &str = "1s";
/// healthz must say 200 this soon after MariaDB accepts logins again ("~2 s"),
/// whatever the periodic checks met while it was down.
const HEALTHZ_BACK: Duration = Duration::from_millis(2500);
/// healthz may answer from a probe cached this long (HEALTH_CACHE is 500 ms).
const HEALTHZ_GRACE: Duration = Duration::from_secs(1);
/// A new login must succeed this soon after MariaDB is back.
const LOGIN_BACK: Duration = Duration::from_secs(5);
/// The whole test.
const BOUND: Duration = Duration::from_secs(60);

/// Observations and failed requirements, kept so that a timeout still shows them.
#[derive(Default)]
struct Report {
    lines: Vec<String>,
    failures: Vec<String>,
}

#[derive(Clone)]
struct Log {
    t0: Instant,
    report: Arc<Mutex<Report>>,
}

impl Log {
    fn at(&self) -> String {
        format!("+{:5.2}s", self.t0.elapsed().as_secs_f64())
    }

    fn note(&self, line: impl Into<String>) {
        let line = format!("{} {}", self.at(), line.into());
        eprintln!("{line}");
        self.report.lock().unwrap().lines.push(line);
    }

    /// Records whether `requirement` held, with what was seen.
    fn check(&self, ok: bool, requirement: &str, observed: impl Into<String>) {
        let observed = observed.into();
        self.note(format!(
            "[{}] {requirement}: {observed}",
            if ok { "pass" } else { "FAIL" }
        ));
        if !ok {
            self.report
                .lock()
                .unwrap()
                .failures
                .push(format!("{requirement}: {observed}"));
        }
    }

    fn summary(&self) -> String {
        let r = self.report.lock().unwrap();
        format!(
            "{} requirement(s) failed:\n  - {}\n\nobservations:\n{}",
            r.failures.len(),
            r.failures.join("\n  - "),
            r.lines.join("\n")
        )
    }

    fn failed(&self) -> bool {
        !self.report.lock().unwrap().failures.is_empty()
    }
}

/// Every seat handle of every client, named, so a sampler can count them.
type Seats = Arc<Mutex<Vec<(String, SeatHandle)>>>;

/// The slot part (`feature.slot`) of a lease `feature.slot.gen`.
fn slot_of(lease: &str) -> String {
    lease.rsplit_once('.').map_or(lease, |(s, _)| s).to_string()
}

fn state_name(s: &HandleState) -> String {
    match s {
        HandleState::Held => "Held".into(),
        HandleState::Reconnecting { last_error } => format!("Reconnecting ({last_error})"),
        HandleState::Lost { reason } => format!("Lost ({reason})"),
        HandleState::Released => "Released".into(),
    }
}

/// What the sampler saw over the whole test.
#[derive(Default)]
struct Sampled {
    peak_valid: usize,
    /// Two valid handles on one slot at once (an over-grant), with when.
    shared_slots: Vec<String>,
    /// (when, who, state) at every change of a handle's state.
    changes: Vec<(Instant, String, String)>,
}

/// Counts valid handles every 20 ms and records each handle's state changes.
fn sampler(
    seats: Seats,
    log: Log,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Sampled> {
    tokio::spawn(async move {
        let mut out = Sampled::default();
        let mut last: std::collections::HashMap<String, String> = Default::default();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let now = Instant::now();
            let mut valid_slots = Vec::new();
            for (who, h) in seats.lock().unwrap().iter() {
                let st = h.state();
                let name = state_name(&st);
                if last.get(who) != Some(&name) {
                    out.changes.push((now, who.clone(), name.clone()));
                    last.insert(who.clone(), name);
                }
                if h.is_valid() {
                    valid_slots.push((slot_of(&h.lease()), who.clone()));
                }
            }
            out.peak_valid = out.peak_valid.max(valid_slots.len());
            valid_slots.sort();
            for w in valid_slots.windows(2) {
                if w[0].0 == w[1].0 && out.shared_slots.len() < 20 {
                    out.shared_slots.push(format!(
                        "{} slot {} valid for both {} and {}",
                        log.at(),
                        w[0].0,
                        w[0].1,
                        w[1].1
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out
    })
}

/// One healthz answer (or failure) of instance `idx`.
struct Probe {
    idx: usize,
    sent: Instant,
    answered: Instant,
    status: Result<u16, String>,
}

/// Every healthz answer so far, shared with the monitor.
type Probes = Arc<Mutex<Vec<Probe>>>;

/// Polls healthz of every instance every 100 ms until `stop`.
fn healthz_monitor(
    addrs: Vec<String>,
    probes: Probes,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(4))
        .build()
        .unwrap();
    addrs
        .into_iter()
        .enumerate()
        .map(|(idx, addr)| {
            let (http, stop, probes) = (http.clone(), stop.clone(), probes.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sent = Instant::now();
                    let status = http
                        .get(format!("http://{addr}/sentinel/ldk/v1/healthz"))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .map_err(|e| e.to_string());
                    probes.lock().unwrap().push(Probe {
                        idx,
                        sent,
                        answered: Instant::now(),
                        status,
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect()
}

/// Waits (bounded) until the monitor has seen a 200 from each of `n`
/// instances for a probe sent after `since`.
async fn wait_healthy(probes: &Probes, n: usize, since: Instant, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let healthy = {
            let all = probes.lock().unwrap();
            (0..n).all(|idx| {
                all.iter()
                    .any(|p| p.idx == idx && p.sent >= since && p.status == Ok(200))
            })
        };
        if healthy || Instant::now() > deadline {
            return healthy;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One outage: when MariaDB was killed, when the test began to restart it
/// (it may accept connections any moment after), when it accepted logins
/// again, and until when the test looked (the next kill, or the end).
struct Outage {
    label: &'static str,
    killed: Instant,
    restarting: Instant,
    back: Instant,
    until: Instant,
}

/// Checks healthz around one outage: 503 while down (after the cache
/// grace), 200 again within [`HEALTHZ_BACK`] of MariaDB being back.
fn check_healthz(log: &Log, probes: &[Probe], n: usize, o: &Outage) {
    for idx in 0..n {
        let mine: Vec<&Probe> = probes.iter().filter(|p| p.idx == idx).collect();
        let first_503 = mine
            .iter()
            .find(|p| p.sent >= o.killed && p.status == Ok(503))
            .map(|p| p.answered - o.killed);
        let down: Vec<&&Probe> = mine
            .iter()
            .filter(|p| p.sent >= o.killed + HEALTHZ_GRACE && p.answered <= o.restarting)
            .collect();
        let not_503: Vec<String> = down
            .iter()
            .filter(|p| p.status != Ok(503))
            .map(|p| {
                format!(
                    "{:?} at +{:.1}s",
                    p.status,
                    (p.sent - o.killed).as_secs_f64()
                )
            })
            .collect();
        let slowest = down.iter().map(|p| p.answered - p.sent).max();
        let last_200 = mine
            .iter()
            .filter(|p| p.sent >= o.killed && p.answered <= o.restarting && p.status == Ok(200))
            .map(|p| p.answered - o.killed)
            .max();
        log.check(
            !down.is_empty() && not_503.is_empty(),
            &format!("{}: healthz of instance {} is 503 while the database is down", o.label, idx + 1),
            format!(
                "{} answers while down, last 200 {:?} and first 503 {:?} after the kill, slowest answer {:?}, not 503: {:?}",
                down.len(),
                last_200,
                first_503,
                slowest,
                not_503
            ),
        );
        let back_200 = mine
            .iter()
            .filter(|p| p.sent >= o.back && p.answered <= o.until)
            .find(|p| p.status == Ok(200))
            .map(|p| p.answered - o.back);
        log.check(
            back_200.is_some_and(|d| d <= HEALTHZ_BACK),
            &format!(
                "{}: healthz of instance {} is 200 within {HEALTHZ_BACK:?} of the database being back",
                o.label,
                idx + 1
            ),
            format!(
                "first 200 {back_200:?} after (looked for {:?})",
                o.until.saturating_duration_since(o.back)
            ),
        );
    }
}

/// The outcome of one login attempt.
struct Attempt {
    who: String,
    took: Duration,
    result: Result<SeatHandle, ClientError>,
}

fn opts() -> Options {
    // The defaults an application gets: 5 s request timeout.
    Options::default()
}

/// A new client: handshake, then checkout.
async fn fresh_login(who: String, idents: Vec<String>) -> Attempt {
    let began = Instant::now();
    let result = match Client::connect(&idents, opts()).await {
        Ok(c) => c.checkout(FEATURE).await,
        Err(e) => Err(e),
    };
    Attempt {
        who,
        took: began.elapsed(),
        result,
    }
}

/// A checkout on a client whose session was opened before the outage.
async fn connected_login(who: String, client: Client) -> Attempt {
    let began = Instant::now();
    let result = client.checkout(FEATURE).await;
    Attempt {
        who,
        took: began.elapsed(),
        result,
    }
}

/// Whether a login error says the license server's database is unavailable.
fn names_database_outage(e: &ClientError) -> bool {
    let m = e.to_string().to_lowercase();
    m.contains("database")
        && [
            "unavailable",
            "unreachable",
            "down",
            "not reachable",
            "not available",
        ]
        .iter()
        .any(|w| m.contains(w))
}

/// One live lease as the admin API lists it.
#[derive(Debug)]
struct Live {
    lease: String,
    client: String,
    granted_by: String,
    granted_at: String,
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// Live leases by the admin API of `p`.
async fn admin_leases(p: &ServerProc) -> Result<Vec<Live>, String> {
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("http://{}/admin/v1/leases", p.admin))
        .bearer_auth(testkit::CLUSTER_TOKEN)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {v}"));
    }
    v["leases"]
        .as_array()
        .ok_or_else(|| format!("no leases in {v}"))?
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            Ok(Live {
                lease: s("lease"),
                client: s("client_info"),
                granted_by: s("granted_by"),
                granted_at: s("granted_at"),
                expires_at: s("expires_at")
                    .parse()
                    .map_err(|e| format!("expires_at of {l}: {e}"))?,
            })
        })
        .collect()
}

/// After a recovery: the server's live leases never exceed the seats, and
/// every handle a client counts as valid is among them.
async fn check_leases_agree(log: &Log, p: &ServerProc, seats: &Seats, label: &str) {
    let live = admin_leases(p).await;
    let valid: Vec<(String, String)> = seats
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, h)| h.is_valid())
        .map(|(who, h)| (who.clone(), h.lease()))
        .collect();
    match live {
        Ok(live) => {
            let names: Vec<&str> = live.iter().map(|l| l.lease.as_str()).collect();
            let unknown: Vec<&(String, String)> = valid
                .iter()
                .filter(|(_, l)| !names.contains(&l.as_str()))
                .collect();
            log.check(
                live.len() <= SEATS && valid.len() <= SEATS && unknown.is_empty(),
                &format!("{label}: no over-grant (admin API live leases vs. valid handles)"),
                format!(
                    "{} live leases; valid handles {valid:?}; valid but not live: {unknown:?}",
                    live.len()
                ),
            );
            let unheld: Vec<String> = live
                .iter()
                .filter(|l| !valid.iter().any(|(_, v)| *v == l.lease))
                .map(|l| {
                    format!(
                        "{} (client {}, granted by {} at {}, until {})",
                        l.lease, l.client, l.granted_by, l.granted_at, l.expires_at
                    )
                })
                .collect();
            log.note(format!(
                "{label}: live leases held by no valid handle: {unheld:?}"
            ));
        }
        Err(e) => log.check(
            false,
            &format!("{label}: the admin API lists the live leases"),
            e,
        ),
    }
}

/// Logs in with new clients until one succeeds or `until` passes.
async fn login_after_recovery(
    log: &Log,
    idents: &[String],
    seats: &Seats,
    back: Instant,
    label: &str,
) {
    let mut tries = Vec::new();
    let granted = loop {
        let a = fresh_login(format!("{label}-login"), idents.to_vec()).await;
        match a.result {
            Ok(h) => {
                tries.push(format!("granted {} after {:?}", h.lease(), a.took));
                break Some((back.elapsed(), h));
            }
            Err(e) => {
                let answer = matches!(e, ClientError::NoLicense { .. });
                tries.push(format!("{e} after {:?}", a.took));
                if answer || back.elapsed() > LOGIN_BACK {
                    break None;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    log.check(
        granted.as_ref().is_some_and(|(d, _)| *d <= LOGIN_BACK),
        &format!("{label}: a new login succeeds within {LOGIN_BACK:?} of the database being back"),
        format!(
            "{} ({})",
            granted
                .as_ref()
                .map_or("no seat".to_string(), |(d, _)| format!("seat {d:?} after")),
            tries.join("; ")
        ),
    );
    if let Some((_, h)) = granted {
        seats.lock().unwrap().push((format!("{label}-login"), h));
    }
}

/// Releases every tracked handle named `who`.
async fn release(seats: &Seats, who: &str) {
    let mine: Vec<SeatHandle> = {
        let mut all = seats.lock().unwrap();
        let (mine, rest): (Vec<_>, Vec<_>) = all.drain(..).partition(|(w, _)| w == who);
        *all = rest;
        mine.into_iter().map(|(_, h)| h).collect()
    };
    for h in mine {
        h.release().await;
    }
}

/// Login attempts started at the kill; checked once the database is back.
async fn logins_during_outage(
    log: &Log,
    label: &str,
    tasks: Vec<tokio::task::JoinHandle<Attempt>>,
    killed: Instant,
    restarting: Instant,
    seats: &Seats,
) {
    for t in tasks {
        let a = match tokio::time::timeout(Duration::from_secs(15), t).await {
            Ok(a) => a.unwrap(),
            Err(_) => {
                log.check(
                    false,
                    &format!("{label}: a login attempt ends"),
                    "no answer in 15 s",
                );
                continue;
            }
        };
        let ended_while_down = killed + a.took <= restarting;
        let observed = match &a.result {
            Ok(h) => format!(
                "granted {} after {:?} ({} the database was restarted)",
                h.lease(),
                a.took,
                if ended_while_down { "before" } else { "after" }
            ),
            Err(e) => format!("error after {:?}: {e:?} / \"{e}\"", a.took),
        };
        let clear = a.result.as_ref().err().is_some_and(names_database_outage);
        log.check(
            ended_while_down && a.took <= FAST && clear,
            &format!(
                "{label}: {} gets a clear 'database unavailable' error within {FAST:?} while the database is down",
                a.who
            ),
            observed,
        );
        if let Ok(h) = a.result {
            // Counted while it is held, then given back so that the
            // recovery login below is judged on its own.
            let who = format!("{label}-{}", a.who);
            seats.lock().unwrap().push((who.clone(), h));
            release(seats, &who).await;
        }
    }
}

/// Checks that each holder kept its lease through an outage, unless the
/// client's own promise ran out (the handle says Lost).
fn check_holders(
    log: &Log,
    seats: &Seats,
    before: &[(String, String)],
    label: &str,
    require_kept: bool,
) {
    let all = seats.lock().unwrap();
    for (who, lease) in before {
        let Some((_, h)) = all.iter().find(|(w, _)| w == who) else {
            continue;
        };
        let st = h.state();
        let lost = matches!(st, HandleState::Lost { .. });
        let same = h.lease() == *lease;
        let kept = st == HandleState::Held && same;
        if require_kept || !lost {
            log.check(
                kept,
                &format!(
                    "{label}: {who} keeps its seat (same lease {lease}, Held){}",
                    if require_kept {
                        ""
                    } else {
                        " as its promise did not run out"
                    }
                ),
                format!("now {} with lease {}", state_name(&st), h.lease()),
            );
        } else {
            log.note(format!(
                "{label}: {who}'s promise ran out during the outage: {}",
                state_name(&st)
            ));
        }
    }
}

/// Waits (bounded) until every holder that is not Lost is Held again.
async fn wait_holders_settle(seats: &Seats, who: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let settled = seats
            .lock()
            .unwrap()
            .iter()
            .filter(|(w, _)| who.contains(w))
            .all(|(_, h)| {
                matches!(
                    h.state(),
                    HandleState::Held | HandleState::Lost { .. } | HandleState::Released
                )
            });
        if settled {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until the database has renewed every lease in `leases`
/// past the expiry it had at `before` (a heartbeat reached the database).
async fn check_renewed(log: &Log, p: &ServerProc, leases: &[(String, String)], label: &str) {
    let expiry =
        |live: &[Live], lease: &str| live.iter().find(|l| l.lease == lease).map(|l| l.expires_at);
    let first = admin_leases(p).await.unwrap_or_default();
    let before: Vec<_> = leases.iter().map(|(_, l)| expiry(&first, l)).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut now = first;
    loop {
        let renewed = leases
            .iter()
            .zip(&before)
            .all(|((_, l), b)| expiry(&now, l).is_some_and(|e| b.is_none_or(|b| e > b)));
        if renewed || Instant::now() > deadline {
            log.check(
                renewed,
                &format!("{label}: the holders' leases are renewed in the database again"),
                format!(
                    "expiry {:?} -> {:?}",
                    before,
                    leases
                        .iter()
                        .map(|(_, l)| expiry(&now, l))
                        .collect::<Vec<_>>()
                ),
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = admin_leases(p).await.unwrap_or_default();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_killed_twice_under_a_running_cluster() {
    let log = Log {
        t0: Instant::now(),
        report: Arc::default(),
    };
    let body = run(log.clone());
    let outcome = tokio::time::timeout(BOUND, body).await;
    if outcome.is_err() {
        log.check(
            false,
            "the test ends within its bound",
            format!("still running after {BOUND:?}"),
        );
    }
    assert!(!log.failed(), "{}", log.summary());
}

async fn run(log: Log) {
    let mut db = OwnMariaDb::start();
    let url = db.create_database();
    log.note(format!("own MariaDB up on port {} (not 3306)", db.port()));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pubkey, lic) = cli_license(d, "OUT", FEATURE, SEATS as u32);
    let servers: Vec<ServerProc> = ["db-1", "db-2"]
        .iter()
        .map(|id| {
            cluster_instance(
                d,
                &url,
                id,
                "127.0.0.1:0",
                &["--vendor-key", &pubkey],
                &[
                    ("FLOATLM_LEASE_TTL", TTL),
                    // The key canary and integrity checks run every second, so
                    // both run inside each outage: their failing reads must not
                    // keep healthz at 503 once the database is back (issue 12).
                    ("FLOATLM_INTEGRITY_INTERVAL", INTEGRITY_EVERY),
                ],
            )
        })
        .collect();
    admin_cli(&servers[0], &["apply", &lic]);
    let cred = created_credential(&admin_cli(
        &servers[0],
        &["identity", "create", "--name", "outage"],
    ));
    let idents: Vec<String> = servers
        .iter()
        .map(|s| format!("{cred}@{}", s.licensing))
        .collect();
    log.note(format!(
        "cluster up: {} and {}, {SEATS} seats of {FEATURE}, lease TTL {TTL}",
        servers[0].licensing, servers[1].licensing
    ));

    let seats: Seats = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sampler(seats.clone(), log.clone(), stop.clone());
    let licensing: Vec<String> = servers.iter().map(|s| s.licensing.clone()).collect();
    let probes: Probes = Arc::default();
    let health = healthz_monitor(licensing, probes.clone(), stop.clone());

    // Two holders, each its own client with a seat; one more client with a
    // session open and no seat, as an application that logs in later.
    let mut holders = Vec::new();
    let first_checkout = Instant::now();
    for i in 1..=2 {
        let c = Client::connect(&idents, opts()).await.unwrap();
        let h = c.checkout(FEATURE).await.unwrap();
        let who = format!("holder-{i}");
        holders.push((who.clone(), h.lease()));
        seats.lock().unwrap().push((who, h));
    }
    let holder_names: Vec<String> = holders.iter().map(|(w, _)| w.clone()).collect();
    let waiting = Client::connect(&idents, opts()).await.unwrap();
    log.note(format!(
        "holders: {holders:?}; the connected client without a seat is {} (its X-LDK-Instance); now {}",
        waiting.instance_id(),
        chrono::Utc::now()
    ));

    // ---- Outage 1: shorter than the TTL. Promises (TTL minus margin) were
    // just given, so every holder's promise covers it.
    db.kill();
    let killed = Instant::now();
    log.note(format!(
        "outage 1: MariaDB SIGKILLed for {SHORT_OUTAGE:?}, {:?} after the first checkout \
         (each holder was promised the TTL minus a 1 s margin)",
        killed - first_checkout
    ));
    let tasks = vec![
        tokio::spawn(fresh_login("a new client".into(), idents.clone())),
        tokio::spawn(connected_login(
            "a connected client".into(),
            waiting.clone(),
        )),
    ];
    tokio::time::sleep_until((killed + SHORT_OUTAGE).into()).await;
    let restarting = Instant::now();
    let took = db.restart();
    let back = Instant::now();
    log.note(format!("outage 1: MariaDB back (restart took {took:?})"));
    logins_during_outage(&log, "outage 1", tasks, killed, restarting, &seats).await;
    wait_holders_settle(&seats, &holder_names, Duration::from_secs(5)).await;
    check_holders(&log, &seats, &holders, "outage 1", true);
    login_after_recovery(&log, &idents, &seats, back, "outage 1").await;
    check_leases_agree(&log, &servers[0], &seats, "outage 1").await;
    release(&seats, "outage 1-login").await;
    // The cluster runs normally before the next outage: healthz says so and
    // the holders' heartbeats reach the database again.
    let healthy = wait_healthy(&probes, servers.len(), back, HEALTHZ_BACK * 2).await;
    log.note(format!("outage 1: both healthz 200 again: {healthy}"));
    check_renewed(&log, &servers[0], &holders, "outage 1").await;
    let (killed1, restarting1, back1) = (killed, restarting, back);

    // ---- Outage 2: longer than the TTL.
    db.kill();
    let killed = Instant::now();
    let outage1 = Outage {
        label: "outage 1",
        killed: killed1,
        restarting: restarting1,
        back: back1,
        until: killed,
    };
    log.note(format!("outage 2: MariaDB SIGKILLed for {LONG_OUTAGE:?}"));
    let mut tasks = vec![
        tokio::spawn(fresh_login("a new client".into(), idents.clone())),
        tokio::spawn(connected_login(
            "a connected client".into(),
            waiting.clone(),
        )),
    ];
    // What the servers themselves answer, given the time: a client that
    // waits 15 s (observed only; applications use the 5 s default).
    let patient = {
        let idents = idents.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            let o = Options {
                request_timeout: Duration::from_secs(15),
                ..opts()
            };
            let r = match Client::connect(&idents, o).await {
                Ok(c) => c.checkout(FEATURE).await.map(|h| h.lease()),
                Err(e) => Err(e),
            };
            (began.elapsed(), r)
        })
    };
    // Later in the outage, once whatever the servers had cached is stale.
    tokio::time::sleep_until((killed + Duration::from_secs(6)).into()).await;
    tasks.push(tokio::spawn(fresh_login(
        "a new client 6 s into the outage".into(),
        idents.clone(),
    )));
    tokio::time::sleep_until((killed + LONG_OUTAGE).into()).await;
    let restarting = Instant::now();
    let took = db.restart();
    let back = Instant::now();
    log.note(format!("outage 2: MariaDB back (restart took {took:?})"));
    logins_during_outage(&log, "outage 2", tasks, killed, restarting, &seats).await;
    match tokio::time::timeout(Duration::from_secs(20), patient).await {
        Ok(Ok((took, r))) => log.note(format!(
            "outage 2: a client with a 15 s request timeout got, after {took:?}: {r:?}"
        )),
        _ => log.note("outage 2: the client with a 15 s request timeout got no answer in 20 s"),
    }
    wait_holders_settle(&seats, &holder_names, Duration::from_secs(5)).await;
    check_holders(&log, &seats, &holders, "outage 2", false);
    login_after_recovery(&log, &idents, &seats, back, "outage 2").await;

    // Fill the remaining seats: the server must refuse the one past N.
    let mut fill = Vec::new();
    for i in 0..SEATS {
        let a = fresh_login(format!("fill-{i}"), idents.clone()).await;
        match a.result {
            Ok(h) => {
                fill.push(format!("granted {}", h.lease()));
                seats.lock().unwrap().push((a.who, h));
            }
            Err(e) => {
                fill.push(format!("{e}"));
                break;
            }
        }
    }
    log.note(format!("filling the seats after outage 2: {fill:?}"));
    check_leases_agree(&log, &servers[0], &seats, "outage 2").await;

    // Give healthz its time to recover before judging it.
    let healthy = wait_healthy(&probes, servers.len(), back, HEALTHZ_BACK * 2).await;
    log.note(format!("outage 2: both healthz 200 again: {healthy}"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sampled = sampler.await.unwrap();
    for h in health {
        h.await.unwrap();
    }
    let probes = std::mem::take(&mut *probes.lock().unwrap());
    let outage2 = Outage {
        label: "outage 2",
        killed,
        restarting,
        back,
        until: Instant::now(),
    };
    check_healthz(&log, &probes, servers.len(), &outage1);
    check_healthz(&log, &probes, servers.len(), &outage2);
    log.check(
        sampled.peak_valid <= SEATS && sampled.shared_slots.is_empty(),
        "at no time more valid seat handles than seats, nor two on one slot",
        format!(
            "peak {} valid handles; shared slots: {:?}",
            sampled.peak_valid, sampled.shared_slots
        ),
    );
    for (when, who, state) in &sampled.changes {
        log.note(format!(
            "handle {who} -> {state} at +{:.2}s",
            when.duration_since(log.t0).as_secs_f64()
        ));
    }
    let mut servers = servers;
    for s in servers.iter_mut() {
        let running = s.child.try_wait().ok().flatten().is_none();
        log.check(
            running,
            &format!("floatlm {} keeps running (never restarted)", s.instance),
            if running {
                "running".to_string()
            } else {
                format!("exited; log:\n{}", s.log())
            },
        );
    }
    if log.failed() {
        for s in &servers {
            let text = s.log();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "---- last lines of {}'s log ----\n{}",
                s.instance,
                lines[lines.len().saturating_sub(25)..].join("\n")
            );
        }
    }
    let all: Vec<(String, SeatHandle)> = seats.lock().unwrap().drain(..).collect();
    for (_, h) in all {
        h.release().await;
    }
}
