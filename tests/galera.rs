//! Galera as a backend (issue 18), on a real 3-node MariaDB Galera cluster
//! the test starts itself (crates/testkit/src/galera.rs).
//!
//! Instance A talks to node 0 first, instance B to node 1 first, each with
//! all three nodes in its `database_url`. Recording clients (the promise
//! checker, crates/testkit/src/promise.rs) log in, heartbeat and log out at random
//! through their home instance while node 1 is SIGKILLed and later
//! restarted. Then every node is killed and both instances get SIGTERM.
//!
//! Requirements checked:
//! * the promise holds across instances on different nodes;
//! * no seat is lost: no heartbeat answers a held lease dead;
//! * B's clients keep working through B (its pool moves to another node);
//! * the killed node rejoins (Synced, cluster of 3);
//! * two instances started at the same moment on a fresh database through
//!   different nodes both come up (migrations heal the race: GET_LOCK is
//!   per node on Galera);
//! * `admin status` of every instance reports its conflicts and retries per
//!   statement kind (`db_retries`);
//! * with every node down, a login gets `unavailable` fast, and
//!   SIGTERM ends each instance within the drain delay plus the shutdown
//!   grace (and a second for the runtime).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use testkit::galera::Galera;
use testkit::promise::{Answer, InstanceSpec, PromiseServers, RecClient, Recorder, Target};

/// The whole run: kill at KILL_AT, restart at RESTART_AT, stop at RUN.
const KILL_AT: Duration = Duration::from_secs(6);
const RESTART_AT: Duration = Duration::from_secs(15);
const RUN: Duration = Duration::from_secs(24);
const CLIENTS_PER_INSTANCE: usize = 3;
/// Clients that log in and out without pause for the first CHURN.
const CHURNERS: usize = 6;
const CHURN: Duration = Duration::from_secs(4);
/// `floatlm::http::SHUTDOWN_GRACE` plus the runtime's 1 s shutdown timeout,
/// plus a second for a loaded machine; the instances run with no drain delay.
const EXIT_BOUND: Duration = Duration::from_secs(3 + 1 + 1);
/// With every node down a login is answered `unavailable` within
/// this (as tests/db_outage.rs bounds it for a single server: well under the
/// client library's 5 s request timeout).
const UNAVAILABLE_BOUND: Duration = Duration::from_millis(3500);

/// What one client saw.
#[derive(Default, Debug)]
struct Seen {
    /// Heartbeats that answered a held (not released) lease dead.
    lost: Vec<String>,
}

/// One client's walk through its home instance until `until`.
async fn walk(c: RecClient, at: Target, seed: u64, until: Instant, seen: Arc<Mutex<Seen>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut held: Option<String> = None;
    // Bounded: the run lasts RUN and each step takes at least 100 ms.
    for _ in 0..1000 {
        if Instant::now() >= until {
            break;
        }
        let roll = rng.gen_range(0..100);
        match held.clone() {
            None => {
                let feature = if rng.gen_bool(0.3) { "sim" } else { "cad" };
                let r = c.login(&at, feature).await;
                held = r.granted().map(str::to_string);
            }
            Some(lease) if roll < 85 => {
                let r = c.heartbeat(&at, std::slice::from_ref(&lease)).await;
                if r.alive(&lease) == Some(false) {
                    seen.lock().unwrap().lost.push(format!(
                        "{}: lease {lease} answered dead through {} ({})",
                        c.name, at.name, r.answer
                    ));
                    held = None;
                }
            }
            Some(lease) => {
                c.logout(&at, &lease).await;
                held = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..500))).await;
    }
    if let Some(lease) = held {
        c.logout(&at, &lease).await;
    }
}

/// Until `until`: log in and out as fast as answers come, alternating
/// between the instances (so between nodes): certification conflicts.
async fn churn(c: RecClient, targets: Vec<Target>, until: Instant) {
    for k in 0..10_000 {
        if Instant::now() >= until {
            break;
        }
        let at = &targets[k % targets.len()];
        let r = c.login(at, "cad").await;
        if let Some(lease) = r.granted().map(str::to_string) {
            c.logout(&targets[(k + 1) % targets.len()], &lease).await;
        }
    }
}

/// Whether a record is an answer that did what was asked (a grant, or a
/// heartbeat or logout answered), as opposed to an error or no answer.
fn served(a: &Answer) -> bool {
    use floatlm_protocol::messages::Response;
    matches!(
        a,
        Answer::Sealed(Response::Granted { .. })
            | Answer::Sealed(Response::Heartbeat { .. })
            | Answer::Sealed(Response::Released { .. })
    )
}

/// Two instances started at the same moment on a fresh database, through
/// nodes 0 and 2: both migrate (one waits for the other or finds nothing
/// left) and come up.
fn both_first_starts_come_up(g: &Galera) {
    let began = Instant::now();
    let db = g.create_database();
    let dir = tempfile::tempdir().unwrap();
    let urls = [g.url(&[0, 1, 2], &db), g.url(&[2, 0, 1], &db)];
    let gate = std::sync::Barrier::new(2);
    let started: Vec<testkit::ServerProc> = std::thread::scope(|s| {
        let runs: Vec<_> = urls
            .iter()
            .zip(["first-0", "first-2"])
            .map(|(url, id)| {
                let (gate, dir) = (&gate, dir.path());
                s.spawn(move || {
                    gate.wait();
                    testkit::cluster_instance(dir, url, id, "127.0.0.1:0", &[], &[])
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| {
                r.join()
                    .expect("an instance started at the same moment did not come up")
            })
            .collect()
    });
    for p in &started {
        let healed = p.log().contains("met another instance migrating");
        eprintln!(
            "galera: first start {} up (race healed here: {healed})",
            p.instance
        );
    }
    eprintln!(
        "galera: two first starts on a fresh database up in {:?}",
        began.elapsed()
    );
}

/// `db_retries` of each instance's `admin status`.
/// Each instance's `db_retries` from `admin status` (conflicts and retries
/// per statement kind); an instance whose status lacks it is a problem.
fn retry_counts(cluster: &PromiseServers, problems: &mut Vec<String>) -> String {
    cluster
        .servers
        .iter()
        .map(|s| {
            let m = blocking(|| testkit::admin_cli(s, &["status"]));
            let v: serde_json::Value = serde_json::from_str(&m).unwrap_or_default();
            if !v["db_retries"].is_array() {
                problems.push(format!(
                    "{}: `admin status` shows no db_retries (conflicts and retries per statement kind): {m}",
                    s.instance
                ));
            }
            format!("{}: {}\n", s.instance, v["db_retries"])
        })
        .collect()
}

/// Debug logs show each retried conflict with its statement kind.
fn debug_log() -> Vec<(String, String)> {
    vec![("FLOATLM_LOG_LEVEL".to_string(), "floatlm=debug".to_string())]
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_galera_node_killed_under_load_keeps_every_promise() {
    let seed: u64 = std::env::var("FLOATLM_PROMISE_SEED")
        .ok()
        .map(|s| s.parse().expect("FLOATLM_PROMISE_SEED is a u64"))
        .unwrap_or_else(rand::random);
    eprintln!("galera run: seed {seed} (FLOATLM_PROMISE_SEED={seed} repeats its choices)");
    let began = Instant::now();
    let mut g = blocking(Galera::start);
    eprintln!("galera: 3 nodes Synced in {:?}", began.elapsed());
    blocking(|| both_first_starts_come_up(&g));
    let db = blocking(|| g.create_database());
    let url_a = g.url(&[0, 1, 2], &db);
    let url_b = g.url(&[1, 2, 0], &db);
    // One after the other: the promise checker's set-up applies the
    // license through A.
    let mut cluster = PromiseServers::start(
        &[InstanceSpec::new("ga", "5s", "10s")],
        &|_| url_a.clone(),
        &|_| debug_log(),
        &[("cad", 3), ("sim", 1)],
        2,
    )
    .await;
    let pubkey = cluster
        .dir
        .path()
        .join("vendor/vendor.pub")
        .display()
        .to_string();
    let env: Vec<(String, String)> = [("FLOATLM_LEASE_TTL", "5s"), ("FLOATLM_LEASE_HOLD", "10s")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(debug_log())
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let b = blocking(|| {
        testkit::cluster_instance(
            cluster.dir.path(),
            &url_b,
            "gb",
            "127.0.0.1:0",
            &["--vendor-key", &pubkey],
            &env,
        )
    });
    cluster.targets.push(Target::of(&b));
    cluster.servers.push(b);
    let rec = Recorder::new();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let t0 = Instant::now();
    let until = t0 + RUN;
    let mut tasks = Vec::new();
    for (i, target) in cluster.targets.iter().enumerate() {
        for k in 0..CLIENTS_PER_INSTANCE {
            let c = cluster.client(&rec, &format!("{}-c{k}", target.name), k % 2);
            tasks.push(tokio::spawn(walk(
                c,
                target.clone(),
                seed.wrapping_add((i * 10 + k) as u64),
                until,
                seen.clone(),
            )));
        }
    }
    // Churn before the kill: how many certification conflicts it meets.
    let churners: Vec<_> = (0..CHURNERS)
        .map(|k| {
            let c = cluster.client(&rec, &format!("churn{k}"), k % 2);
            tokio::spawn(churn(c, cluster.targets.clone(), t0 + CHURN))
        })
        .collect();
    for t in churners {
        t.await.unwrap();
    }
    let churned = rec.records().len();
    eprintln!(
        "galera: {churned} requests in the first {CHURN:?} (with {CHURNERS} churning clients); conflicts so far:\n{}",
        retry_counts(&cluster, &mut Vec::new())
    );

    tokio::time::sleep_until((t0 + KILL_AT).into()).await;
    blocking(|| g.node(1).kill());
    let killed = Instant::now();
    eprintln!(
        "galera: node 1 (instance gb's) SIGKILLed at {:?}",
        killed - t0
    );
    tokio::time::sleep_until((t0 + RESTART_AT).into()).await;
    let restarted = Instant::now();
    blocking(|| g.restart(1));
    let rejoin = blocking(|| g.wait_synced(1, 3));
    eprintln!(
        "galera: node 1 restarted at {:?}; Synced again in a cluster of 3 after {:?}",
        restarted - t0,
        restarted.elapsed()
    );
    for t in tasks {
        t.await.unwrap();
    }

    let records = rec.records();
    eprintln!("galera run: {}", rec.summary());
    let grants = records.iter().filter(|r| r.granted().is_some()).count();
    let b = &cluster.targets[1].name;
    let of_b: Vec<_> = records.iter().filter(|r| &r.instance == b).collect();
    let first_served = of_b
        .iter()
        .filter(|r| r.sent > killed && served(&r.answer))
        .map(|r| r.sent - killed)
        .min();
    let served_b_down = of_b
        .iter()
        .filter(|r| r.sent > killed && r.sent < restarted && served(&r.answer))
        .count();
    let failed_b = of_b
        .iter()
        .filter(|r| r.sent > killed && !served(&r.answer))
        .count();
    let no_answer = records
        .iter()
        .filter(|r| matches!(r.answer, Answer::None(_)))
        .count();
    eprintln!(
        "galera: {grants} grants; through gb while node 1 was down: {served_b_down} served, first one sent {first_served:?} after the kill; {failed_b} failed after the kill; {no_answer} requests got no answer at all; node 1 Synced {rejoin:?} after it accepted logins again"
    );
    let mut problems = Vec::new();
    eprintln!(
        "galera: conflicts and retries per statement kind:\n{}",
        retry_counts(&cluster, &mut problems)
    );

    if let Err(e) = rec.check(&cluster.seats) {
        problems.push(format!("the promise was broken:\n{e}"));
    }
    let lost = std::mem::take(&mut seen.lock().unwrap().lost);
    if !lost.is_empty() {
        problems.push(format!("seats were lost:\n{}", lost.join("\n")));
    }
    if grants < 10 {
        problems.push(format!(
            "too few grants ({grants}) for the run to mean anything"
        ));
    }
    if served_b_down < 5 {
        problems.push(format!(
            "gb's clients did not keep working while its node was down: {served_b_down} requests served"
        ));
    }
    if first_served.is_none_or(|d| d > Duration::from_secs(5)) {
        problems.push(format!(
            "gb served its first request {first_served:?} after its node died (bound 5 s)"
        ));
    }

    // Every node down: SIGTERM ends each instance within the bound.
    for i in 0..3 {
        blocking(|| g.node(i).kill());
    }
    // While no node answers, a login gets a fast `unavailable`, on every
    // instance: sealed when its session opened from the identity cache, or
    // the handshake itself refused with 503 `unavailable` when opening the
    // session needed the database (both name an incident; neither is a
    // client timeout).
    let rec2 = Recorder::new();
    let pokes: Vec<_> = cluster
        .targets
        .iter()
        .map(|t| {
            let c = cluster.client(&rec2, "poke", 0);
            let t = t.clone();
            tokio::spawn(async move {
                let began = Instant::now();
                c.login(&t, "cad").await;
                began.elapsed()
            })
        })
        .collect();
    let mut took = Vec::new();
    for p in pokes {
        took.push(p.await.unwrap());
    }
    let slowest = took.iter().max().copied().unwrap_or_default();
    for r in rec2.records() {
        let unavailable = match &r.answer {
            Answer::Sealed(floatlm_protocol::messages::Response::Error { code, .. }) => {
                *code == floatlm_protocol::messages::ErrorCode::Unavailable
            }
            Answer::None(why) => why.contains("HTTP 503") && why.contains("\"unavailable\""),
            _ => false,
        };
        eprintln!(
            "galera: every node down, a login through {} answered {:?} (slowest of the logins: {slowest:?})",
            r.instance, r.answer
        );
        if !unavailable {
            problems.push(format!(
                "with every node down, a login through {} got {:?}; expected `unavailable`",
                r.instance, r.answer
            ));
        }
    }
    if slowest > UNAVAILABLE_BOUND {
        problems.push(format!(
            "with every node down, a login took {slowest:?} to be refused (bound {UNAVAILABLE_BOUND:?})"
        ));
    }
    let stop = Instant::now();
    for s in &cluster.servers {
        s.signal(libc::SIGTERM);
    }
    for s in cluster.servers.iter_mut() {
        let status = blocking(|| s.wait_exit(EXIT_BOUND + Duration::from_secs(5)));
        let took = stop.elapsed();
        eprintln!(
            "galera: {} exited {status:?} {took:?} after SIGTERM with every node down",
            s.instance
        );
        if status.is_none() || took > EXIT_BOUND {
            problems.push(format!(
                "{} did not exit within {EXIT_BOUND:?} of SIGTERM with every node down (exit {status:?} after {took:?})",
                s.instance
            ));
        }
    }

    if !problems.is_empty() {
        let logs = cluster.logs();
        panic!(
            "seed {seed} (rerun with FLOATLM_PROMISE_SEED={seed}):\n{}\n\ninstance logs (tail):\n{}\n{}",
            problems.join("\n"),
            tail(&logs, 20_000),
            g.logs()
        );
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut from = s.len().saturating_sub(n);
    while !s.is_char_boundary(from) {
        from += 1;
    }
    &s[from..]
}
