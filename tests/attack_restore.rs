//! Attacks on the restore / quarantine path (docs/seats.md, "When the
//! database goes back in time").
//!
//! The database is made to go back in time the way an asynchronous replica
//! that missed the last transactions does on failover: the seat tables
//! (`slots`, `grant_requests`) are copied aside, a few seat changes happen,
//! then the copy is put back. The operator then runs `floatlm admin
//! quarantine` before any client talks again, exactly as documented.
//!
//! The lease the lost transactions *ended* (released by its holder) comes
//! back from the backup as live, with its holder, and quarantine raises its
//! expiry. Quarantine's protection for the lost grant is written into the
//! very row of that revived lease, so:
//!
//! * its holder is served again (a heartbeat or a resent login after its
//!   answered logout is a full promise), while the lost lease's promise runs;
//! * a release of it (a retried logout) sets `expires_at = NULL` and frees the
//!   seat at once, undoing the quarantine;
//! * an operator's force release bounds the expiry by the revived lease's
//!   own `promise_ms`, which says nothing about the lost lease's promise
//!   (granted by an instance with a longer `lease_ttl`).

use std::time::{Duration, Instant};
use testkit::promise::{force_release, Findings, InstanceSpec, PromiseCluster, Record, Recorder};

fn granted(r: &Record, rec: &Recorder) -> String {
    r.granted()
        .unwrap_or_else(|| panic!("setup: expected a grant: {}", r.line(rec.t0())))
        .to_string()
}

async fn pool(cl: &PromiseCluster) -> sqlx::MySqlPool {
    sqlx::MySqlPool::connect(&cl.db().url).await.unwrap()
}

/// A snapshot of the seat tables, as a replica would hold them.
async fn backup(p: &sqlx::MySqlPool) {
    for sql in [
        "CREATE TABLE bk_slots AS SELECT * FROM slots",
        "CREATE TABLE bk_grant_requests AS SELECT * FROM grant_requests",
    ] {
        sqlx::query(sql).execute(p).await.unwrap();
    }
}

/// The failover: the database is the snapshot again.
async fn restore(p: &sqlx::MySqlPool) {
    let mut tx = p.begin().await.unwrap();
    for sql in [
        "DELETE FROM slots",
        "INSERT INTO slots SELECT * FROM bk_slots",
        "DELETE FROM grant_requests",
        "INSERT INTO grant_requests SELECT * FROM bk_grant_requests",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// A logs in and out; D takes the seat; the database loses both (restore);
/// quarantine. A heartbeats its lease and resends its login: both are
/// answered `granted`/`alive` while D's promise still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_released_in_lost_transactions_is_served_again_after_quarantine() {
    let cl = PromiseCluster::start(&[InstanceSpec::new("x", "10s", "20s")], &[("cad", 1)], 2).await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let x = &cl.targets[0];
    let (a, d) = (cl.client(&rec, "A", 0), cl.client(&rec, "D", 1));
    let db = pool(&cl).await;
    let mut f = Findings::new();

    let l1 = granted(&a.login_with(x, "cad", "A-1").await, &rec);
    backup(&db).await;
    let out = a.logout(x, &l1).await;
    assert_eq!(out.released(), Some(true), "setup: {}", out.line(t0));
    let l2 = granted(&d.login(x, "cad").await, &rec);
    restore(&db).await;
    let q = testkit::admin_cli(&cl.servers[0], &["quarantine"]);
    eprintln!("quarantine: {}", q.trim());

    let hb = a.heartbeat(x, std::slice::from_ref(&l1)).await;
    f.expect(
        hb.alive(&l1) != Some(true),
        format!(
            "{l1} was released (answered) before the restore; D holds {l2} with a promise; A's heartbeat must be dead: {}",
            hb.line(t0)
        ),
    );
    let re = a.resend_login(x, "A-1").await;
    f.expect(
        re.granted().is_none(),
        format!(
            "A's login A-1 resent after its logout was answered must not be granted while D's promise runs: {}",
            re.line(t0)
        ),
    );
    f.finish(&rec, &cl.seats);
}

/// As above, but A only repeats its logout (a retry): the restored row is
/// released (`expires_at = NULL`), the quarantine on that seat is gone, and
/// C is granted the seat at once while D's promise (lost by the restore)
/// still runs. A, C and D are all well-behaved clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_logout_after_a_restore_undoes_the_quarantine() {
    let cl = PromiseCluster::start(&[InstanceSpec::new("x", "10s", "20s")], &[("cad", 1)], 3).await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let x = &cl.targets[0];
    let (a, c, d) = (
        cl.client(&rec, "A", 0),
        cl.client(&rec, "C", 1),
        cl.client(&rec, "D", 2),
    );
    let db = pool(&cl).await;
    let mut f = Findings::new();

    let l1 = granted(&a.login(x, "cad").await, &rec);
    backup(&db).await;
    let out = a.logout(x, &l1).await;
    assert_eq!(out.released(), Some(true), "setup: {}", out.line(t0));
    granted(&d.login(x, "cad").await, &rec);
    restore(&db).await;
    let q = testkit::admin_cli(&cl.servers[0], &["quarantine"]);
    eprintln!("quarantine: {}", q.trim());

    let again = a.logout(x, &l1).await;
    eprintln!("A's repeated logout: {}", again.line(t0));
    let cg = c.login(x, "cad").await;
    f.expect(
        cg.granted().is_none(),
        format!(
            "after quarantine the seat must stay held while D's promise (lost by the restore) runs, but C got it: {}",
            cg.line(t0)
        ),
    );
    f.finish(&rec, &cl.seats);
}

/// No client misbehaves. Instance s has lease_ttl 5 s, l has 30 s (a rolling
/// change). A logs in through s and out; D logs in through l (a 30 s
/// promise); the database loses both. The operator runs quarantine with a
/// hold longer than every instance's lease_hold, then force-releases the
/// stale lease of A it sees in `lease list`. The force release bounds the
/// slot by A's lease's promise_ms (5 s) + 1 s: C is granted the seat about
/// 6 s later, while D's promise runs 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_release_after_quarantine_frees_the_seat_under_a_lost_promise() {
    let cl = PromiseCluster::start(
        &[
            InstanceSpec::new("s", "5s", "5s"),
            InstanceSpec::new("l", "30s", "60s"),
        ],
        &[("cad", 1)],
        3,
    )
    .await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let (s, l) = (&cl.targets[0], &cl.targets[1]);
    let (a, c, d) = (
        cl.client(&rec, "A", 0),
        cl.client(&rec, "C", 1),
        cl.client(&rec, "D", 2),
    );
    let db = pool(&cl).await;
    let mut f = Findings::new();

    let l1 = granted(&a.login(s, "cad").await, &rec);
    backup(&db).await;
    let out = a.logout(s, &l1).await;
    assert_eq!(out.released(), Some(true), "setup: {}", out.line(t0));
    let dg = d.login(l, "cad").await;
    granted(&dg, &rec);
    restore(&db).await;
    let q = testkit::admin_cli(&cl.servers[1], &["quarantine", "--hold", "61s"]);
    eprintln!("quarantine: {}", q.trim());
    let fr = force_release(&rec, l, &l1).await;
    eprintln!("force release: {}", fr.line(t0));

    // C asks every quarter second for at most 15 s.
    let until = Instant::now() + Duration::from_secs(15);
    let mut got = None;
    while Instant::now() < until {
        let r = c.login(l, "cad").await;
        if r.granted().is_some() {
            got = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Some(g) = &got {
        f.expect(
            false,
            format!(
                "C was granted the only seat while D's promise from {} still ran: {}",
                dg.line(t0),
                g.line(t0)
            ),
        );
    }
    f.finish(&rec, &cl.seats);
}
