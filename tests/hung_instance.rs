//! Issue 12: a hung instance is left in time.
//!
//! Two `floatlm serve` instances share a database. Clients hold seats two
//! ways at once: directly (the library `Client` given both instances'
//! addresses) and through a real NGINX running the shipped
//! `nginx/floatlm-hash.conf` unchanged (its own timeouts, `max_fails`,
//! `fail_timeout`). Both use the library's default options. The instance
//! serving some of each is frozen with SIGSTOP (it still accepts TCP
//! connections into its backlog, and never answers) for longer than every
//! promise its holders had when it froze, so each of them must renew
//! through the other instance, then resumed with SIGCONT. What must hold:
//!
//! * no holder loses its seat: every handle stays valid with the same lease,
//!   no loss callback fires, and every holder on the frozen instance renews
//!   past the promise it had when the instance froze;
//! * new checkouts succeed during the stall (fresh clients, and clients
//!   whose session was on the frozen instance), and the one past N is
//!   refused "all seats taken";
//! * the seat invariant, checked against the database all along: every
//!   seat a handle may use is held for that handle's lease in its slot row
//!   at least as long as the handle may use it, and no two valid handles
//!   name the same lease;
//! * the client's status shows the frozen instance failing and the other
//!   one in use.
//!
//! The test prints what it measured: how long requests sent to the frozen
//! instance took to be answered by the other (probes through each path),
//! how long new checkouts took, and how close any handle came to the end of
//! its promise.
//!
//! Two TTLs. 10 s with `lease_hold` 10 s, frozen once every holder renewed
//! twice (the reported case: renewed promises are what is left of the
//! recorded expiry, 5–7 s; the client before hedging lost its seat here,
//! and through NGINX with the old 30 s read timeout checkouts failed), for
//! 12 s. 60 s with the defaults, frozen right after the checkouts, until
//! every promise held at the freeze has run out (about 59 s), so that
//! every holder on the frozen instance renews through the other one at
//! least twice (a heartbeat every 20 s) and its first promise is past.

use floatlm_client::{
    Client, ClientError, HandleState, NoLicenseReason, Options, Released, SeatHandle, ServerState,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::nginx::{front, ServerParams};
use testkit::{cli_license, cluster_instance, ServerProc, TestDb};

const FEATURE: &str = "cad";
/// Per path (direct, proxy): holders on the instance that will freeze, and
/// on the other one.
const ON_VICTIM: usize = 3;
const ELSEWHERE: usize = 2;
/// Per path: fresh clients checking out during the stall.
const FRESH: usize = 2;
/// Every seat: the holders, the fresh clients, and one more checkout per
/// path by a client whose session is on the frozen instance.
const SEATS: usize = 2 * (ON_VICTIM + ELSEWHERE + FRESH + 1);

/// Freezes a process with SIGSTOP; SIGCONT on drop, so that a failing test
/// never leaves it stopped (the ServerProc then kills it).
struct Frozen(i32);

impl Frozen {
    fn freeze(p: &ServerProc) -> Frozen {
        let pid = p.child.id() as i32;
        unsafe {
            libc::kill(pid, libc::SIGSTOP);
        }
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// The library given both instances' addresses.
    Direct,
    /// One address: NGINX with the shipped config.
    Proxy,
}

struct Holder {
    who: String,
    path: Path,
    client: Client,
    seat: SeatHandle,
    on_victim: bool,
    lease: String,
}

/// The instance a client's requests go to now.
fn instance_of(c: &Client) -> Option<String> {
    let status = c.server_status();
    status
        .iter()
        .find(|s| s.active)
        .or(status.first())
        .and_then(|s| s.instance.clone())
}

/// `(feature_id, slot_no, lease_gen, nonce)` of a lease id.
fn parse_lease(lease: &str) -> (i64, i64, i64, i64) {
    let p: Vec<&str> = lease.split('.').collect();
    assert_eq!(p.len(), 4, "lease id {lease}");
    (
        p[0].parse().unwrap(),
        p[1].parse().unwrap(),
        p[2].parse().unwrap(),
        u64::from_str_radix(p[3], 16).unwrap() as i64,
    )
}

/// One timed request of a probe: when it started (since the freeze), how
/// long it took, and what came back.
type Probe = Vec<(f64, Duration, Result<(), String>)>;

/// Queries through `client` every 250 ms until `stop`.
fn probe(client: Client, t0: Instant, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Probe> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let began = Instant::now();
            let r = client.query(&[FEATURE]).await;
            out.push((
                began.saturating_duration_since(t0).as_secs_f64(),
                began.elapsed(),
                r.map(|_| ()).map_err(|e| e.to_string()),
            ));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        out
    })
}

fn describe_probe(name: &str, p: &Probe) -> String {
    let max = p.iter().map(|(_, d, _)| *d).max().unwrap_or_default();
    let slow: Vec<String> = p
        .iter()
        .filter(|(_, d, _)| *d > Duration::from_millis(200))
        .map(|(at, d, _)| format!("+{at:.1}s:{}ms", d.as_millis()))
        .collect();
    format!(
        "{name}: {} queries, slowest {} ms; over 200 ms: [{}]",
        p.len(),
        max.as_millis(),
        slow.join(", ")
    )
}

/// A slot row as the watcher reads it: lease_gen, lease_nonce, whether a
/// holder is set, and microseconds until its expiry by the database clock.
type SlotRow = (i64, i64, bool, Option<i64>);

/// What the watcher saw.
#[derive(Default)]
struct Watch {
    /// Broken rules, with the time since the freeze.
    violations: Vec<String>,
    /// The least time any valid handle had left on its promise.
    closest: Option<(Duration, String)>,
    /// Handles seen Reconnecting (a heartbeat round that failed).
    reconnecting: HashSet<String>,
    samples: u64,
}

/// Every 100 ms: each handle must be Held or Reconnecting; every valid
/// handle's lease must be held in its slot row at least until the handle's
/// `valid_until`, and no two valid handles may name one lease.
fn watch(
    holders: Arc<Mutex<Vec<Holder>>>,
    pool: sqlx::MySqlPool,
    t0: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Watch> {
    tokio::spawn(async move {
        let mut w = Watch::default();
        while !stop.load(Ordering::Relaxed) {
            let since = || {
                t0.lock()
                    .unwrap()
                    .map_or("before the freeze".to_string(), |t| {
                        format!("+{:.2}s", t.elapsed().as_secs_f64())
                    })
            };
            let snapshot_at = Instant::now();
            let snapshot: Vec<(String, HandleState, String, Duration)> = holders
                .lock()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h.who.clone(),
                        h.seat.state(),
                        h.seat.lease(),
                        h.seat.valid_until().saturating_duration_since(snapshot_at),
                    )
                })
                .collect();
            let rows: Vec<(i64, i64, i64, i64, bool, Option<i64>)> = match sqlx::query_as(
                "SELECT feature_id, CAST(slot_no AS SIGNED), lease_gen, lease_nonce, holder IS NOT NULL,
                        TIMESTAMPDIFF(MICROSECOND, NOW(6), expires_at)
                 FROM slots",
            )
            .fetch_all(&pool)
            .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    w.violations.push(format!("{}: the audit query failed: {e}", since()));
                    break;
                }
            };
            let skew = snapshot_at.elapsed();
            let rows: HashMap<(i64, i64), SlotRow> = rows
                .into_iter()
                .map(|(f, s, g, n, h, left)| ((f, s), (g, n, h, left)))
                .collect();
            let mut leases = HashSet::new();
            for (who, state, lease, left) in snapshot {
                match state {
                    HandleState::Held => {}
                    HandleState::Reconnecting { .. } => {
                        w.reconnecting.insert(who.clone());
                    }
                    other => w
                        .violations
                        .push(format!("{}: {who} is {other:?}", since())),
                }
                if left.is_zero() {
                    continue;
                }
                if w.closest.as_ref().is_none_or(|(d, _)| left < *d) {
                    w.closest = Some((left, format!("{who} at {}", since())));
                }
                if !leases.insert(lease.clone()) {
                    w.violations
                        .push(format!("{}: two valid handles name {lease}", since()));
                }
                let (f, s, g, n) = parse_lease(&lease);
                match rows.get(&(f, s)) {
                    Some(&(rg, rn, true, Some(db_left_us)))
                        if rg == g
                            && rn == n
                            && Duration::from_micros(db_left_us.max(0) as u64) + skew >= left => {}
                    other => w.violations.push(format!(
                        "{}: {who} may use {lease} for {left:?} more, its slot row says {other:?}",
                        since()
                    )),
                }
            }
            w.samples += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        w
    })
}

/// A new client (library defaults) whose requests go to instance `want`;
/// None when it landed on another.
async fn client_on(ids: &[String], want: &str) -> Option<Client> {
    let c = Client::connect(ids, Options::default()).await.unwrap();
    (instance_of(&c).as_deref() == Some(want)).then_some(c)
}

/// Freezes the victim once every holder renewed `renewals` times, for at
/// least `min_stall` and until every promise held at the freeze ran out.
async fn hung_instance(ttl_s: u64, hold_s: u64, renewals: u32, min_stall: Duration) {
    let began = Instant::now();
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pubkey, lic) = cli_license(d, "HUNG", FEATURE, SEATS as u32);
    let (ttl, hold) = (format!("{ttl_s}s"), format!("{hold_s}s"));
    let ids = ["lic-1", "lic-2"];
    let servers: Vec<ServerProc> = ids
        .iter()
        .map(|id| {
            cluster_instance(
                d,
                &db,
                id,
                "127.0.0.1:0",
                &[
                    "--vendor-key",
                    &pubkey,
                    "--lease-ttl",
                    &ttl,
                    "--lease-hold",
                    &hold,
                ],
                &[],
            )
        })
        .collect();
    let (_nginx, proxy, cred) = front(
        &servers,
        "floatlm-hash.conf",
        d,
        ServerParams::Shipped,
        &lic,
        "hung",
    );
    let direct_ids: Vec<String> = servers
        .iter()
        .map(|s| format!("{cred}@{}", s.licensing))
        .collect();
    let proxy_ids = vec![format!("{cred}@{proxy}")];
    let ids_of = |p: Path| match p {
        Path::Direct => &direct_ids,
        Path::Proxy => &proxy_ids,
    };
    let (victim, other) = (ids[0], ids[1]);

    // Holders: ON_VICTIM per path whose session is on the victim, ELSEWHERE
    // on the other instance. Watched from the first checkout on.
    let losses = Arc::new(Mutex::new(Vec::<String>::new()));
    let holders: Arc<Mutex<Vec<Holder>>> = Arc::new(Mutex::new(Vec::new()));
    let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let t0: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let watcher = watch(holders.clone(), pool.clone(), t0.clone(), stop.clone());
    let keep = |client: Client, seat: SeatHandle, path: Path, on_victim: bool, what: &str| {
        let mut hs = holders.lock().unwrap();
        let who = format!("{path:?}-{what}-{}", hs.len());
        {
            let (losses, who) = (losses.clone(), who.clone());
            seat.on_loss(move |why| losses.lock().unwrap().push(format!("{who}: {why}")));
        }
        hs.push(Holder {
            lease: seat.lease(),
            who,
            path,
            client,
            seat,
            on_victim,
        });
    };
    for path in [Path::Direct, Path::Proxy] {
        for (want, n) in [(victim, ON_VICTIM), (other, ELSEWHERE)] {
            let mut got = 0;
            for _ in 0..60 {
                if got == n {
                    break;
                }
                let Some(client) = client_on(ids_of(path), want).await else {
                    continue;
                };
                let seat = client.checkout(FEATURE).await.unwrap();
                keep(client, seat, path, want == victim, "holder");
                got += 1;
            }
            assert_eq!(got, n, "{path:?} clients landing on {want}");
        }
    }
    // Probes: a client per path whose requests go to the victim.
    let mut probe_clients = Vec::new();
    for path in [Path::Direct, Path::Proxy] {
        let mut c = None;
        for _ in 0..60 {
            c = client_on(ids_of(path), victim).await;
            if c.is_some() {
                break;
            }
        }
        probe_clients.push((path, c.expect("a probe client on the victim")));
    }

    // Let every holder renew `renewals` times first: a lease's first
    // promise is its longest (a fresh grant covers a whole TTL); later ones
    // are what is left of the recorded expiry, as short as half a TTL with
    // lease_hold = lease_ttl. The issue was lost seats with those.
    let mut seen: HashMap<String, (Instant, u32)> = HashMap::new();
    testkit::wait_for(
        "every holder to renew",
        Duration::from_secs(10 * ttl_s),
        || {
            // Every handle looked at on every poll (no short cut), so
            // that no renewal goes unseen.
            let behind = holders
                .lock()
                .unwrap()
                .iter()
                .filter(|h| {
                    let v = h.seat.valid_until();
                    let e = seen.entry(h.who.clone()).or_insert((v, 0));
                    if v != e.0 {
                        *e = (v, e.1 + 1);
                    }
                    e.1 < renewals
                })
                .count();
            let done = behind == 0;
            async move { done.then_some(()) }
        },
    )
    .await;

    // Freeze the victim.
    let promised_at_freeze: Instant = holders
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.seat.valid_until())
        .max()
        .unwrap();
    let frozen = Frozen::freeze(&servers[0]);
    let t_freeze = Instant::now();
    *t0.lock().unwrap() = Some(t_freeze);
    let setup = t_freeze - began;
    let stop_probes = Arc::new(AtomicBool::new(false));
    let probes: Vec<_> = probe_clients
        .iter()
        .map(|(path, c)| (*path, probe(c.clone(), t_freeze, stop_probes.clone())))
        .collect();

    // New checkouts while it is frozen: one more by a client of each path
    // whose session is on the victim, then FRESH new clients per path.
    let mut checkouts = Vec::new();
    for path in [Path::Direct, Path::Proxy] {
        let client = holders
            .lock()
            .unwrap()
            .iter()
            .find(|h| h.path == path && h.on_victim)
            .map(|h| h.client.clone())
            .unwrap();
        let t = Instant::now();
        let seat = client.checkout(FEATURE).await.unwrap_or_else(|e| {
            panic!("{path:?}: a checkout on the frozen instance's session: {e}")
        });
        checkouts.push(format!(
            "{path:?} on the victim's session: {} ms",
            t.elapsed().as_millis()
        ));
        keep(client, seat, path, true, "extra");
        for _ in 0..FRESH {
            let t = Instant::now();
            let client = Client::connect(ids_of(path), Options::default())
                .await
                .unwrap_or_else(|e| panic!("{path:?}: a new client during the stall: {e}"));
            let seat = client
                .checkout(FEATURE)
                .await
                .unwrap_or_else(|e| panic!("{path:?}: a new checkout during the stall: {e}"));
            checkouts.push(format!("{path:?} fresh: {} ms", t.elapsed().as_millis()));
            keep(client, seat, path, false, "fresh");
        }
    }
    // Every seat is held now: the next checkout, on either path, is refused.
    for path in [Path::Direct, Path::Proxy] {
        let c = Client::connect(ids_of(path), Options::default())
            .await
            .unwrap();
        match c.checkout(FEATURE).await {
            Err(ClientError::NoLicense {
                reason: NoLicenseReason::AllSeatsTaken,
                ..
            }) => {}
            Err(e) => panic!("{path:?}: checkout {} of {SEATS}: {e}", SEATS + 1),
            Ok(s) => panic!(
                "{path:?}: checkout {} of {SEATS} was granted: {}",
                SEATS + 1,
                s.lease()
            ),
        }
    }

    // Stay frozen until every promise held at the freeze has run out (so
    // every holder on the victim must have renewed through the other
    // instance), and at least `min_stall`.
    let thaw_at = (promised_at_freeze + Duration::from_secs(1)).max(t_freeze + min_stall);
    testkit::wait_for("the stall", Duration::from_secs(90), || async {
        (Instant::now() >= thaw_at).then_some(())
    })
    .await;
    let stalled = t_freeze.elapsed();
    let mut problems = losses.lock().unwrap().clone();
    for h in holders.lock().unwrap().iter() {
        let mut bad = |what: String| problems.push(format!("{}: {what}", h.who));
        if !h.seat.is_valid() {
            bad(format!("{:?}", h.seat.state()));
        }
        if h.seat.lease() != h.lease {
            bad(format!("lease {} became {}", h.lease, h.seat.lease()));
        }
        if h.seat.valid_until() <= promised_at_freeze {
            bad("not renewed past the promises held at the freeze".into());
        }
        // Its requests go to the live instance now.
        if instance_of(&h.client).as_deref() != Some(other) {
            bad(format!("requests go to {:?}", h.client.server_status()));
        }
        // A direct client that was on the victim shows it failing.
        if h.path == Path::Direct && h.on_victim {
            let status = h.client.server_status();
            let v = status
                .iter()
                .find(|s| s.instance.as_deref() == Some(victim));
            if !matches!(v.map(|s| &s.state), Some(ServerState::Failing { .. })) {
                bad(format!("the frozen instance is shown as {v:?}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "after {stalled:?} frozen: {problems:#?}"
    );
    stop_probes.store(true, Ordering::Relaxed);
    let mut probe_lines = Vec::new();
    for (path, p) in probes {
        let p = p.await.unwrap();
        let failed: Vec<_> = p.iter().filter(|(_, _, r)| r.is_err()).collect();
        assert!(failed.is_empty(), "{path:?} probe failed: {failed:?}");
        probe_lines.push(describe_probe(&format!("{path:?} probe"), &p));
    }

    // Thaw: it answers its backlog (stale copies the clients gave up on);
    // nobody may lose anything over it.
    drop(frozen);
    let thawed = Instant::now();
    let victim_addr = servers[0].licensing.clone();
    testkit::wait_for(
        "the thawed instance to answer healthz, and 3 s more",
        Duration::from_secs(30),
        || {
            let url = format!("http://{victim_addr}/sentinel/ldk/v1/healthz");
            async move {
                let ok = reqwest::get(url).await.ok()?.status().is_success();
                (ok && thawed.elapsed() > Duration::from_secs(3)).then_some(())
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let w = watcher.await.unwrap();
    let losses = losses.lock().unwrap().clone();

    eprintln!(
        "hung instance, lease_ttl {ttl_s}s lease_hold {hold_s}s: setup {:.1}s, frozen {:.1}s",
        setup.as_secs_f64(),
        stalled.as_secs_f64()
    );
    for l in &probe_lines {
        eprintln!("  {l}");
    }
    eprintln!("  checkouts during the stall: {}", checkouts.join("; "));
    if let Some((d, who)) = &w.closest {
        eprintln!(
            "  closest any handle came to the end of its promise: {} ms ({who})",
            d.as_millis()
        );
    }
    eprintln!(
        "  {} watcher samples; handles ever Reconnecting: {:?}",
        w.samples, w.reconnecting
    );
    assert!(losses.is_empty(), "seats lost: {losses:?}");
    assert!(
        w.violations.is_empty(),
        "{} violations: {:#?}",
        w.violations.len(),
        &w.violations[..w.violations.len().min(20)]
    );

    // Everyone gives back their seat.
    let hs = std::mem::take(&mut *holders.lock().unwrap());
    for h in hs {
        let who = h.who.clone();
        match h.seat.give_back().await {
            Ok(Released::Released | Released::Resent) => {}
            other => panic!("{who}: release: {other:?}"),
        }
    }
    eprintln!("  whole test {:.1}s", began.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_10s_half_ttl_promises() {
    hung_instance(10, 10, 2, Duration::from_secs(12)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_60s() {
    hung_instance(60, 120, 0, Duration::from_secs(25)).await;
}
