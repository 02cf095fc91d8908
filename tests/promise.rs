//! The promise, checked on what clients were told: three instances with
//! different lease TTLs and holds on one MariaDB database (and, in a second
//! test, the single instance of an SQLite file), recording raw-protocol
//! clients doing seeded random things (including the unkind ones: resent
//! logins, heartbeats after logout, a heartbeat racing its own logout,
//! operator force releases, users releasing their identity's seats from
//! other sessions, twice at once), then the checker of
//! `crates/testkit/src/promise.rs` over everything they were answered. The
//! checker's own tests on synthetic logs are here too.
//!
//! `FLOATLM_PROMISE_SEED=N` repeats a run's choices (the answers, and so
//! what a client does next, still depend on timing). `FLOATLM_PROMISE_LOG=1`
//! prints every request; `FLOATLM_PROMISE_NO_FORCE=1` leaves the operator
//! out, to tell force releases from the other ways the promise breaks, and
//! `FLOATLM_PROMISE_NO_RELEASE=1` the users' own releases.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::promise::{
    force_release, live_leases, Answer, InstanceSpec, Op, PromiseCluster, RecClient, Recorder,
    Target,
};
use testkit::Kind;

// ------------------------------------------------- the checker's own tests

mod checker {
    use super::*;

    fn seats(n: &[(&str, usize)]) -> BTreeMap<String, usize> {
        n.iter().map(|(f, n)| (f.to_string(), *n)).collect()
    }

    fn login(rid: &str) -> Op {
        Op::Login {
            feature: "cad".into(),
            request_id: rid.into(),
        }
    }

    fn hb(lease: &str) -> Op {
        Op::Heartbeat {
            leases: vec![lease.into()],
        }
    }

    fn logout(lease: &str) -> Op {
        Op::Logout {
            lease: lease.into(),
        }
    }

    #[test]
    fn an_overlap_is_found_with_its_instant_and_leases() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1000,
            Some(1010),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        let e = r.check(&seats(&[("cad", 1)])).unwrap_err();
        assert_eq!(e.violations.len(), 1, "{e}");
        let v = &e.violations[0];
        assert_eq!(v.feature, "cad");
        // From when D was told.
        assert_eq!(v.at, Duration::from_millis(1010));
        assert_eq!(v.leases, vec!["1.0.1".to_string(), "1.1.1".to_string()]);
        assert!(
            e.report.contains("t=+1.0100s") && e.report.contains("#1 D login"),
            "{e}"
        );
        // Two seats: fine, and two at once is the peak.
        assert_eq!(r.check(&seats(&[("cad", 2)])).unwrap()["cad"], 2);
    }

    #[test]
    fn promises_of_one_lease_count_once_and_ends_come_before_starts() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 1000, false),
        );
        r.log_ms(
            "C",
            hb("1.0.1"),
            500,
            Some(510),
            Answer::heartbeat(&[("1.0.1", true, 500)]),
        );
        // Told exactly when C's last promise ends.
        r.log_ms(
            "D",
            login("D:1"),
            990,
            Some(1000),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        assert_eq!(r.check(&seats(&[("cad", 1)])).unwrap()["cad"], 1);
    }

    #[test]
    fn a_logout_cuts_the_promises_sent_before_it() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            hb("1.0.1"),
            900,
            Some(910),
            Answer::heartbeat(&[("1.0.1", true, 5000)]),
        );
        r.log_ms(
            "C",
            logout("1.0.1"),
            1000,
            Some(1010),
            Answer::released("1.0.1", true),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1005,
            Some(1020),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        assert_eq!(r.check(&seats(&[("cad", 1)])).unwrap()["cad"], 1);
    }

    #[test]
    fn a_login_sent_before_a_logout_but_answered_after_it_is_no_overlap() {
        // D asks while C's seat is promised; the seat is freed by C's logout
        // and granted to D before D hears back. D holds it from then on.
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r.log_ms(
            "D",
            login("D:1"),
            994,
            Some(1060),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            logout("1.0.1"),
            1000,
            Some(1050),
            Answer::released("1.0.1", true),
        );
        assert_eq!(r.check(&seats(&[("cad", 1)])).unwrap()["cad"], 1);
        // Told before C's logout was even sent: an overlap.
        r.log_ms(
            "E",
            login("E:1"),
            900,
            Some(990),
            Answer::granted("1.2.1", "cad", 5000, false),
        );
        let e = r.check(&seats(&[("cad", 1)])).unwrap_err();
        assert_eq!(e.violations[0].at, Duration::from_millis(990), "{e}");
    }

    #[test]
    fn an_answer_to_a_request_sent_during_an_outstanding_logout_does_not_count() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            logout("1.0.1"),
            1000,
            Some(1200),
            Answer::released("1.0.1", true),
        );
        r.log_ms(
            "C",
            hb("1.0.1"),
            1100,
            Some(1300),
            Answer::heartbeat(&[("1.0.1", true, 5000)]),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1150,
            Some(1160),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        assert_eq!(r.check(&seats(&[("cad", 1)])).unwrap()["cad"], 1);
    }

    #[test]
    fn a_heartbeat_sent_after_the_logout_was_answered_counts_if_alive() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            logout("1.0.1"),
            1000,
            Some(1010),
            Answer::released("1.0.1", true),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1100,
            Some(1110),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            hb("1.0.1"),
            1200,
            Some(1210),
            Answer::heartbeat(&[("1.0.1", true, 5000)]),
        );
        let e = r.check(&seats(&[("cad", 1)])).unwrap_err();
        assert_eq!(e.violations[0].at, Duration::from_millis(1210), "{e}");
        assert!(e.report.contains("C heartbeat [1.0.1]"), "{e}");
        // The same heartbeat answered dead is fine.
        let r2 = Recorder::new();
        r2.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r2.log_ms(
            "C",
            logout("1.0.1"),
            1000,
            Some(1010),
            Answer::released("1.0.1", true),
        );
        r2.log_ms(
            "D",
            login("D:1"),
            1100,
            Some(1110),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        r2.log_ms(
            "C",
            hb("1.0.1"),
            1200,
            Some(1210),
            Answer::heartbeat(&[("1.0.1", false, 0)]),
        );
        assert!(r2.check(&seats(&[("cad", 1)])).is_ok());
    }

    #[test]
    fn a_replayed_grant_counts() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            logout("1.0.1"),
            1000,
            Some(1010),
            Answer::released("1.0.1", true),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1100,
            Some(1110),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        let resend = Op::LoginResend {
            feature: "cad".into(),
            request_id: "C:1".into(),
        };
        r.log_ms(
            "C",
            resend,
            1500,
            Some(1510),
            Answer::granted("1.0.1", "cad", 3000, true),
        );
        let e = r.check(&seats(&[("cad", 1)])).unwrap_err();
        assert_eq!(e.violations[0].at, Duration::from_millis(1510), "{e}");
        assert!(e.report.contains("replayed=true"), "{e}");
    }

    #[test]
    fn an_unanswered_logout_gives_the_lease_up_for_good() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            logout("1.0.1"),
            1000,
            None,
            Answer::None("timed out".into()),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1100,
            Some(1110),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            hb("1.0.1"),
            4000,
            Some(4010),
            Answer::heartbeat(&[("1.0.1", true, 5000)]),
        );
        assert!(r.check(&seats(&[("cad", 1)])).is_ok());
    }

    #[test]
    fn a_force_release_ends_nothing() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        let fr = Op::ForceRelease {
            lease: "1.0.1".into(),
        };
        r.log_ms(
            "operator",
            fr,
            1000,
            Some(1010),
            Answer::Http(200, "{}".into()),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1100,
            Some(1110),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        let e = r.check(&seats(&[("cad", 1)])).unwrap_err();
        assert!(e.report.contains("force-release 1.0.1"), "{e}");
    }

    #[test]
    fn a_release_by_another_session_of_the_identity_ends_nothing() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        let rel = Op::Release {
            lease: "1.0.1".into(),
        };
        r.log_ms(
            "user",
            rel,
            1000,
            Some(1010),
            Answer::Sealed(floatlm_protocol::messages::Response::SeatReleased {
                lease: "1.0.1".into(),
                released: true,
                free_at_ms: Some(0),
            }),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1100,
            Some(1110),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        let e = r.check(&seats(&[("cad", 1)])).unwrap_err();
        assert!(e.report.contains("release 1.0.1 (own identity)"), "{e}");
    }

    #[test]
    fn alive_for_a_lease_never_granted_is_a_failure() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            hb("9.9.9"),
            0,
            Some(10),
            Answer::heartbeat(&[("9.9.9", true, 5000)]),
        );
        let e = r.check(&seats(&[("cad", 1)])).unwrap_err();
        assert_eq!(e.anomalies.len(), 1, "{e}");
        assert!(e.report.contains("no answer ever granted 9.9.9"), "{e}");
    }

    #[test]
    fn features_are_checked_apart_and_unanswered_grants_promise_nothing() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        let sim = Op::Login {
            feature: "sim".into(),
            request_id: "D:1".into(),
        };
        r.log_ms(
            "D",
            sim,
            100,
            Some(110),
            Answer::granted("2.0.1", "sim", 5000, false),
        );
        r.log_ms(
            "E",
            login("E:1"),
            200,
            None,
            Answer::None("timed out".into()),
        );
        let max = r.check(&seats(&[("cad", 1), ("sim", 1)])).unwrap();
        assert_eq!((max["cad"], max["sim"]), (1, 1));
    }
}

// ------------------------------------------------------ the randomized run

/// How long clients act, and how many operations each does at most.
const RUN: Duration = Duration::from_secs(20);
const MAX_OPS: usize = 90;
const CLIENTS: usize = 8;

/// A lease a client was granted: (lease, request id of the login).
#[derive(Clone)]
struct Held {
    lease: String,
    request_id: String,
    /// The instance it was given up through (logout), if it was.
    via: Option<usize>,
}

/// An instance other than `i` of `n` (`i` itself when there is only one).
fn another(rng: &mut StdRng, i: usize, n: usize) -> usize {
    if n > 1 {
        (i + rng.gen_range(1..n)) % n
    } else {
        i
    }
}

fn request_id(r: &testkit::promise::Record) -> String {
    match &r.op {
        Op::Login { request_id, .. } | Op::LoginResend { request_id, .. } => request_id.clone(),
        _ => String::new(),
    }
}

/// One client's random walk; stops at `until` or after [`MAX_OPS`].
async fn walk(c: RecClient, targets: Arc<Vec<Target>>, seed: u64, until: Instant) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut held: Vec<Held> = Vec::new();
    let mut gone: Vec<Held> = Vec::new();
    let n = targets.len();
    for _ in 0..MAX_OPS {
        if Instant::now() >= until {
            break;
        }
        let i = rng.gen_range(0..n);
        let at = &targets[i];
        let other = another(&mut rng, i, n);
        let roll = rng.gen_range(0..100);
        if (held.is_empty() && roll < 70) || (roll < 20 && held.len() < 2) {
            // Log in with a new request id.
            let feature = if rng.gen_bool(0.3) { "sim" } else { "cad" };
            let r = c.login(at, feature).await;
            if let Some(lease) = r.granted() {
                held.push(Held {
                    lease: lease.into(),
                    request_id: request_id(&r),
                    via: None,
                });
            }
        } else if roll < 55 && !held.is_empty() {
            // Heartbeat every lease held, through any instance.
            let leases: Vec<String> = held.iter().map(|h| h.lease.clone()).collect();
            let r = c.heartbeat(at, &leases).await;
            lose_dead(&r, &mut held, &mut gone);
        } else if roll < 65 && !held.is_empty() {
            let mut h = held.swap_remove(rng.gen_range(0..held.len()));
            c.logout(at, &h.lease).await;
            h.via = Some(i);
            gone.push(h);
        } else if roll < 72 && !held.is_empty() {
            // A heartbeat and a logout of the same lease at the same moment.
            let mut h = held.swap_remove(rng.gen_range(0..held.len()));
            let lo = if rng.gen_bool(0.5) { i } else { other };
            c.heartbeat_and_logout(at, &targets[lo], &h.lease).await;
            h.via = Some(lo);
            gone.push(h);
        } else if roll < 84 && !gone.is_empty() {
            // Resend the login of a lease given up, maybe on a new session.
            let h = gone[rng.gen_range(0..gone.len())].clone();
            if rng.gen_bool(0.5) {
                c.forget_session(at).await;
            }
            let r = c.resend_login(at, &h.request_id).await;
            if let Some(lease) = r.granted() {
                // The client believes what it is told.
                if !held.iter().any(|x| x.lease == lease) {
                    gone.retain(|x| x.lease != lease);
                    held.push(Held {
                        lease: lease.into(),
                        request_id: h.request_id,
                        via: None,
                    });
                }
            }
        } else if roll < 95 && !gone.is_empty() {
            // A heartbeat after logout, through another instance than the logout's.
            let h = &gone[rng.gen_range(0..gone.len())];
            let j = match h.via {
                Some(v) => another(&mut rng, v, n),
                None => i,
            };
            c.heartbeat(&targets[j], std::slice::from_ref(&h.lease))
                .await;
        } else if !held.is_empty() {
            let leases: Vec<String> = held.iter().map(|h| h.lease.clone()).collect();
            let r = c.heartbeat(&targets[other], &leases).await;
            lose_dead(&r, &mut held, &mut gone);
        }
        // Pacing is the point here: bounded, and short enough for every
        // held lease to be renewed well inside its TTL.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(30..600))).await;
    }
}

/// Moves the leases a heartbeat found dead from `held` to `gone`.
fn lose_dead(r: &testkit::promise::Record, held: &mut Vec<Held>, gone: &mut Vec<Held>) {
    let (dead, alive): (Vec<Held>, Vec<Held>) = held
        .drain(..)
        .partition(|h| r.alive(&h.lease) == Some(false));
    *held = alive;
    gone.extend(dead);
}

/// Now and then an operator force-releases a live lease.
async fn operator(rec: Arc<Recorder>, targets: Arc<Vec<Target>>, seed: u64, until: Instant) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(3000..6000))).await;
        if Instant::now() >= until {
            return;
        }
        let at = &targets[rng.gen_range(0..targets.len())];
        let live = live_leases(at).await;
        if live.is_empty() {
            continue;
        }
        let lease = &live[rng.gen_range(0..live.len())];
        force_release(&rec, at, lease).await;
    }
}

/// Now and then a user releases a seat of its own identity from another
/// session (`floatlm seats`, then `floatlm release`), sometimes the same
/// release twice at once through two instances (a resend racing the
/// first); the holders keep heartbeating and resending logins meanwhile.
async fn own_release(c: RecClient, targets: Arc<Vec<Target>>, seed: u64, until: Instant) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = targets.len();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1500..3500))).await;
        if Instant::now() >= until {
            return;
        }
        let i = rng.gen_range(0..n);
        let listed = c.mine(&targets[i]).await.mine();
        if listed.is_empty() {
            continue;
        }
        let lease = &listed[rng.gen_range(0..listed.len())];
        if rng.gen_bool(0.5) {
            let j = another(&mut rng, i, n);
            tokio::join!(c.release(&targets[i], lease), c.release(&targets[j], lease));
        } else {
            c.release(&targets[i], lease).await;
        }
    }
}

/// Three instances with different lease TTLs and holds on one MariaDB
/// database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_clients_never_hold_more_promises_than_seats() {
    random_run(
        Kind::Mysql,
        &[
            InstanceSpec::new("p1", "5s", "10s"),
            InstanceSpec::new("p2", "6s", "6s"),
            InstanceSpec::new("p3", "5s", "15s"),
        ],
    )
    .await
}

/// The same clients on the single instance of an SQLite file (SQLite is
/// single-node), its lease_hold equal to its lease_ttl so that every
/// heartbeat extends its lease: every grant, extension and release goes
/// through the one writer, racing the logouts and releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_clients_never_hold_more_promises_than_seats_on_sqlite() {
    random_run(Kind::Sqlite, &[InstanceSpec::new("s1", "5s", "5s")]).await
}

/// The randomized run on `kind`: [`CLIENTS`] random walks, the operator and
/// two users releasing their own seats, for [`RUN`]; then the checker and
/// the usage records.
async fn random_run(kind: Kind, instances: &[InstanceSpec]) {
    let seed: u64 = std::env::var("FLOATLM_PROMISE_SEED")
        .ok()
        .map(|s| s.parse().expect("FLOATLM_PROMISE_SEED is a u64"))
        .unwrap_or_else(rand::random);
    eprintln!(
        "promise run on {kind:?}: seed {seed} (FLOATLM_PROMISE_SEED={seed} repeats its choices)"
    );
    let cluster = PromiseCluster::start_on(kind, instances, &[("cad", 2), ("sim", 1)], 2).await;
    let rec = Recorder::new();
    let targets = Arc::new(cluster.targets.clone());
    let until = Instant::now() + RUN;
    let mut tasks = Vec::new();
    for k in 0..CLIENTS {
        let c = cluster.client(&rec, &format!("c{k}"), k % 2);
        tasks.push(tokio::spawn(walk(
            c,
            targets.clone(),
            seed.wrapping_add(k as u64),
            until,
        )));
    }
    if std::env::var_os("FLOATLM_PROMISE_NO_FORCE").is_none() {
        tasks.push(tokio::spawn(operator(
            rec.clone(),
            targets.clone(),
            seed ^ 0x5eed,
            until,
        )));
    }
    if std::env::var_os("FLOATLM_PROMISE_NO_RELEASE").is_none() {
        for k in 0..2 {
            let c = cluster.client(&rec, &format!("user{k}"), k);
            tasks.push(tokio::spawn(own_release(
                c,
                targets.clone(),
                seed ^ (0x0e1ea5e + k as u64),
                until,
            )));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    rec.dump_if_asked();
    let records = rec.records();
    let grants = records.iter().filter(|r| r.granted().is_some()).count();
    eprintln!("promise run: {}; {grants} grants", rec.summary());
    assert!(
        grants >= 10,
        "too few grants ({grants}) for the run to mean anything; seed {seed}: {}",
        rec.summary()
    );
    match rec.check(&cluster.seats) {
        Ok(peak) => eprintln!("promise run: held; peak leases per feature {peak:?}"),
        Err(e) => panic!("seed {seed} (rerun with FLOATLM_PROMISE_SEED={seed}):\n{e}"),
    }
    // The usage records of the run agree with the grants the checker saw.
    match testkit::promise::usage_consistent(&cluster.db_url(), &records, &cluster.seats).await {
        Ok(n) => eprintln!("promise run: {n} usage rows consistent with the answers"),
        Err(e) => panic!("seed {seed}: usage records disagree with the run:\n{e}"),
    }
}
