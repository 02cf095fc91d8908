//! Deterministic regressions for the promise (see crates/testkit/src/promise.rs):
//! one feature with one seat, each scenario asserted through the checker
//! and directly. Lease TTLs are 5 s, the smallest floatlm accepts. The
//! resent login and the heartbeat racing its logout run on MariaDB and on
//! SQLite (`…_on_sqlite`: one instance, SQLite is single-node).

use floatlm_protocol::messages::{ErrorCode, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::promise::{Answer, Findings, InstanceSpec, PromiseCluster, Record, Recorder};
use testkit::Kind;

/// The lease a login was granted; the scenario cannot go on without it.
fn granted(r: &Record, rec: &Recorder) -> String {
    r.granted()
        .unwrap_or_else(|| panic!("setup: expected a grant: {}", r.line(rec.t0())))
        .to_string()
}

/// C logs in (request id R) and out; D takes the seat; C resends R. The
/// lease R named is gone, so the resend must be answered `lease_ended`
/// (never `granted`), and C's heartbeats of that lease must be dead — on
/// the instance that granted it and on another (MariaDB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_resent_after_its_lease_ended_is_not_granted() {
    resent_login_after_its_lease_ended(Kind::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_resent_after_its_lease_ended_is_not_granted_on_sqlite() {
    resent_login_after_its_lease_ended(Kind::Sqlite).await
}

async fn resent_login_after_its_lease_ended(kind: Kind) {
    let instances: &[InstanceSpec] = match kind {
        Kind::Mysql => &[
            InstanceSpec::new("a", "5s", "10s"),
            InstanceSpec::new("b", "5s", "10s"),
        ],
        Kind::Sqlite => &[InstanceSpec::new("a", "5s", "10s")],
    };
    let cl = PromiseCluster::start_on(kind, instances, &[("cad", 1)], 2).await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let a = &cl.targets[0];
    let (c, d) = (cl.client(&rec, "C", 0), cl.client(&rec, "D", 1));
    let mut f = Findings::new();

    let lease = granted(&c.login_with(a, "cad", "C-R").await, &rec);
    let hb = c.heartbeat(a, std::slice::from_ref(&lease)).await;
    assert_eq!(hb.alive(&lease), Some(true), "setup: {}", hb.line(t0));
    let out = c.logout(a, &lease).await;
    assert_eq!(out.released(), Some(true), "setup: {}", out.line(t0));
    granted(&d.login(a, "cad").await, &rec);

    c.forget_session(a).await;
    for at in &cl.targets {
        let r = c.resend_login(at, "C-R").await;
        let lease_ended = matches!(
            r.answer,
            Answer::Sealed(Response::Error {
                code: ErrorCode::LeaseEnded,
                ..
            })
        );
        f.expect(
            lease_ended,
            format!(
                "login C-R resent after its lease was released (and the seat re-granted) must be answered lease_ended, never granted: {}",
                r.line(t0)
            ),
        );
        for hb_at in &cl.targets {
            let h = c.heartbeat(hb_at, std::slice::from_ref(&lease)).await;
            f.expect(
                h.alive(&lease) == Some(false),
                format!(
                    "a heartbeat of the released lease {lease} must be dead: {}",
                    h.line(t0)
                ),
            );
        }
    }
    f.finish(&rec, &cl.seats);
}

/// C logs in and heartbeats through B, logs out through A; D takes the seat
/// through A. B must not keep answering C's heartbeats `alive`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_on_another_instance_ends_the_lease_everywhere() {
    let cl = PromiseCluster::start(
        &[
            InstanceSpec::new("a", "5s", "10s"),
            InstanceSpec::new("b", "5s", "10s"),
        ],
        &[("cad", 1)],
        2,
    )
    .await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let (a, b) = (&cl.targets[0], &cl.targets[1]);
    let (c, d) = (cl.client(&rec, "C", 0), cl.client(&rec, "D", 1));
    let mut f = Findings::new();

    let lease = granted(&c.login(b, "cad").await, &rec);
    let hb = c.heartbeat(b, std::slice::from_ref(&lease)).await;
    assert_eq!(hb.alive(&lease), Some(true), "setup: {}", hb.line(t0));
    let out = c.logout(a, &lease).await;
    assert_eq!(out.released(), Some(true), "setup: {}", out.line(t0));
    granted(&d.login(a, "cad").await, &rec);

    let h = c.heartbeat(b, std::slice::from_ref(&lease)).await;
    f.expect(
        h.alive(&lease) == Some(false),
        format!(
            "{lease} was released through a and re-granted; b must answer it dead: {}",
            h.line(t0)
        ),
    );
    f.finish(&rec, &cl.seats);
}

/// A heartbeat and a logout of the same lease sent at the same moment to one
/// instance (lease_hold = lease_ttl, so heartbeats extend leases in the
/// background), many times: once both are answered, the lease is gone for
/// good; D then takes the seat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_racing_a_heartbeat_leaves_nothing_alive() {
    release_racing_a_heartbeat(Kind::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_racing_a_heartbeat_leaves_nothing_alive_on_sqlite() {
    release_racing_a_heartbeat(Kind::Sqlite).await
}

async fn release_racing_a_heartbeat(kind: Kind) {
    const ROUNDS: usize = 50;
    let cl = PromiseCluster::start_on(
        kind,
        &[InstanceSpec::new("x", "5s", "5s")],
        &[("cad", 1)],
        2,
    )
    .await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let x = &cl.targets[0];
    let (c, d) = (cl.client(&rec, "C", 0), cl.client(&rec, "D", 1));
    let mut f = Findings::new();
    let deadline = Instant::now() + Duration::from_secs(25);
    let (mut rounds, mut alive_after) = (0, 0);

    for round in 0..ROUNDS {
        if Instant::now() > deadline {
            break;
        }
        rounds += 1;
        let g = c.login(x, "cad").await;
        let Some(lease) = g.granted().map(String::from) else {
            f.expect(
                false,
                format!(
                    "round {round}: the seat was released last round, yet C's login was refused: {}",
                    g.line(t0)
                ),
            );
            break;
        };
        let (hb, out) = c.heartbeat_and_logout(x, x, &lease).await;
        let after = c.heartbeat(x, std::slice::from_ref(&lease)).await;
        if after.alive(&lease) != Some(false) {
            alive_after += 1;
            f.expect(
                false,
                format!(
                    "round {round}: after a heartbeat and a logout of {lease} were both answered, a further heartbeat must be dead:\n    {}\n    {}\n    {}",
                    hb.line(t0),
                    out.line(t0),
                    after.line(t0)
                ),
            );
        }
        let dg = d.login(x, "cad").await;
        if let Some(dl) = dg.granted() {
            d.logout(x, dl).await;
        }
    }
    eprintln!("{rounds} rounds; {alive_after} left the lease alive after its logout");
    f.finish(&rec, &cl.seats);
}

/// Instance M holds leases for one TTL, N for three. C logs in through N
/// and heartbeats every third of a TTL, alternately through M and N (M, N,
/// M, N), then stops (a crash: no logout) while N still remembers the long
/// expiry of its own grant. D keeps trying through M. D must not be told
/// it holds the seat while C's last answer still promises it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_lease_holds_never_promise_one_seat_twice() {
    let cl = PromiseCluster::start(
        &[
            InstanceSpec::new("m", "5s", "5s"),
            InstanceSpec::new("n", "5s", "15s"),
        ],
        &[("cad", 1)],
        2,
    )
    .await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let (m, n) = (cl.targets[0].clone(), cl.targets[1].clone());
    let c = cl.client(&rec, "C", 0);
    let d = Arc::new(cl.client(&rec, "D", 1));
    let mut f = Findings::new();

    let lease = granted(&c.login(&n, "cad").await, &rec);
    // D tries every quarter second until it gets the seat; the bound is
    // past C's last promise plus the longest hold.
    let d_task = {
        let (d, m) = (d.clone(), m.clone());
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(32);
            while Instant::now() < until {
                let r = d.login(&m, "cad").await;
                if r.granted().is_some() {
                    return Some(r);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            None
        })
    };
    // The client library's cadence: a heartbeat every third of the TTL.
    for k in 0..4 {
        tokio::time::sleep(Duration::from_millis(1700)).await;
        let at = if k % 2 == 0 { &m } else { &n };
        let h = c.heartbeat(at, std::slice::from_ref(&lease)).await;
        if h.alive(&lease) != Some(true) {
            break;
        }
    }
    let d_grant = d_task.await.unwrap();

    // C's promises end at the latest send + ttl of its grant and alive answers.
    let c_end = rec
        .records()
        .iter()
        .filter(|r| r.client == "C")
        .flat_map(|r| {
            r.promises()
                .into_iter()
                .filter(|(l, _)| *l == lease)
                .map(|(_, ttl)| r.sent + Duration::from_millis(ttl))
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap();
    match &d_grant {
        Some(g) => {
            f.expect(
                g.received.unwrap() >= c_end,
                format!(
                    "D was told it holds the only seat at {}, while C's lease {lease} was promised until {}: {}",
                    testkit::promise::rel(t0, g.received.unwrap()),
                    testkit::promise::rel(t0, c_end),
                    g.line(t0)
                ),
            );
            d.logout(&m, g.granted().unwrap()).await;
        }
        None => f.expect(
            false,
            "D never got the seat of a client that stopped heartbeating (its lease must expire within lease_hold)",
        ),
    }
    f.finish(&rec, &cl.seats);
}
