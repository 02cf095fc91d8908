//! Heartbeats: every answer rests on a read of the lease's row made for it
//! (batched, no lock, no write); the database keeps a lease `lease_hold`
//! long and an instance writes only when less than a full `lease_ttl` (plus
//! the clock margin) of the recorded expiry is left.

use floatlm::app::App;
use floatlm::app::SeatFailure;
use floatlm::domain::license::VendorSigningKey;
use floatlm::domain::seats::{GrantRequest, LeaseRef, Renewal, RequestId, SeatError};
use std::time::Duration;
use testkit::{def, layers, wait_for, Kind, TestApp, TestDb, MASTER_KEY_1};

fn req(holder: &str, rid: &str, hold_s: u64) -> GrantRequest {
    GrantRequest {
        feature: "cad".into(),
        request_id: RequestId::new(rid).unwrap(),
        holder: holder.into(),
        client_info: String::new(),
        hold: Duration::from_secs(hold_s),
        promise: Duration::from_secs(60),
        instance_id: "i".into(),
    }
}

async fn apply(t: &TestApp, seats: u32) {
    let text = t.vendor.sign(&def("L1", 1, "cad", seats)).unwrap();
    t.app.licenses().apply_license(&text).await.unwrap();
}

/// (answered from the read alone, extended before the answer, lost).
fn counts(app: &App) -> (u64, u64, u64) {
    let c = app.seats().heartbeat_counts();
    let n = |k: &str| c[k].as_u64().unwrap();
    (
        n("answered_from_read"),
        n("extended_before_answer"),
        n("lost"),
    )
}

async fn recorded_expiry(app: &App, lease: LeaseRef) -> Option<chrono::DateTime<chrono::Utc>> {
    app.storage()
        .leases()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.lease == lease && !l.revoked)
        .map(|l| l.expires_at)
}

async fn renew_one(app: &App, holder: &str, lease: LeaseRef) -> Renewal {
    app.seats().renew(holder, &[lease]).await.unwrap()[0]
}

fn promised(r: Renewal) -> Duration {
    match r {
        Renewal::Renewed(d) => d,
        Renewal::Lost => panic!("the lease should be alive"),
    }
}

async fn reads_answer_while_the_recorded_expiry_covers_the_ttl(kind: Kind) {
    let t = TestApp::new(kind).await;
    let app = &t.app;
    assert_eq!(app.config().lease_ttl, Duration::from_secs(60));
    assert_eq!(app.config().lease_hold, Duration::from_secs(120));
    apply(&t, 4).await;

    // Held for lease_hold: a heartbeat is answered from its read, no write.
    let g = app.seats().grant(&req("alice", "a1", 120)).await.unwrap();
    assert!(g.promise <= Duration::from_secs(60) && g.promise > Duration::from_secs(55));
    for _ in 0..2 {
        let p = promised(renew_one(app, "alice", g.lease).await);
        assert!(
            p <= Duration::from_secs(60) && p > Duration::from_secs(55),
            "{p:?}"
        );
    }
    assert_eq!(counts(app), (2, 0, 0));
    assert_eq!(recorded_expiry(app, g.lease).await, Some(g.expires_at));

    // Another holder naming the lease is told it is not theirs.
    assert_eq!(renew_one(app, "mallory", g.lease).await, Renewal::Lost);
    assert_eq!(counts(app), (2, 0, 1));

    // Only 30 s recorded: less than half the TTL is left after the clock
    // margin, so the lease is extended before the answer, to lease_hold.
    let short = app.seats().grant(&req("bob", "b1", 30)).await.unwrap();
    assert!(short.promise < Duration::from_secs(30));
    let p = promised(renew_one(app, "bob", short.lease).await);
    assert!(p > Duration::from_secs(55), "{p:?}");
    let e = recorded_expiry(app, short.lease).await.unwrap();
    assert!(
        e - short.expires_at > chrono::Duration::seconds(80),
        "{e} vs {}",
        short.expires_at
    );
    assert_eq!(counts(app), (2, 1, 1));

    // 45 s recorded: more than half the TTL, so the heartbeat is answered
    // at once with what is left and the lease is extended in the background.
    let due = app.seats().grant(&req("carol", "d1", 45)).await.unwrap();
    let p = promised(renew_one(app, "carol", due.lease).await);
    assert!(
        p < Duration::from_secs(45) && p > Duration::from_secs(30),
        "{p:?}"
    );
    assert_eq!(counts(app).0, 3);
    wait_for(
        "the background extension",
        Duration::from_secs(10),
        || async {
            recorded_expiry(app, due.lease)
                .await
                .filter(|e| *e - due.expires_at > chrono::Duration::seconds(60))
        },
    )
    .await;
    assert!(promised(renew_one(app, "carol", due.lease).await) > Duration::from_secs(55));
    assert_eq!(app.seats().heartbeat_counts()["extended_in_background"], 1);

    // Released: the very next heartbeat reads it gone.
    assert!(app.seats().release("alice", g.lease).await.unwrap());
    assert_eq!(renew_one(app, "alice", g.lease).await, Renewal::Lost);

    // Force-released: the holder learns at once, and the seat is not granted
    // to anyone while the promise already given may still run.
    app.seats().force_release(short.lease).await.unwrap();
    assert_eq!(renew_one(app, "bob", short.lease).await, Renewal::Lost);
    for (holder, rid) in [("dave", "x1"), ("frank", "z1")] {
        let x = app.seats().grant(&req(holder, rid, 120)).await.unwrap();
        assert_ne!(x.lease.slot_no, short.lease.slot_no);
    }
    assert!(matches!(
        app.seats().grant(&req("erin", "y1", 120)).await,
        Err(SeatFailure::Refused(SeatError::NoSeat { .. }))
    ));
}

/// A release or force release through one instance is seen by the next
/// heartbeat through another: nothing is answered from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_elsewhere_is_seen_by_the_next_heartbeat() {
    let db = TestDb::new().await;
    let url = db.url.clone();
    let t = TestApp::on(Kind::Mysql, Some(db), VendorSigningKey::generate()).await;
    let dir2 = tempfile::tempdir().unwrap();
    let other = App::start(
        layers(dir2.path(), Some(&url), MASTER_KEY_1, &t.vendor)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    apply(&t, 1).await;
    let a = &t.app;

    // Granted through a, released through the other, re-granted there.
    let g = a.seats().grant(&req("alice", "a1", 120)).await.unwrap();
    promised(renew_one(a, "alice", g.lease).await);
    assert!(other.seats().release("alice", g.lease).await.unwrap());
    let b = other.seats().grant(&req("bob", "b1", 120)).await.unwrap();
    assert_eq!(renew_one(a, "alice", g.lease).await, Renewal::Lost);
    promised(renew_one(a, "bob", b.lease).await);

    // Force-released through the other: a tells bob at once; nobody gets the
    // seat while bob's last promise may run.
    other.seats().force_release(b.lease).await.unwrap();
    assert_eq!(renew_one(a, "bob", b.lease).await, Renewal::Lost);
    assert!(matches!(
        a.seats().grant(&req("carol", "c1", 120)).await,
        Err(SeatFailure::Refused(SeatError::NoSeat { .. }))
    ));
}

/// Instances with different `lease_hold` (a rolling change): a renewal by
/// the one with the shorter hold never lowers the expiry the other recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_hold_never_lowers_a_longer_one() {
    let db = TestDb::new().await;
    let url = db.url.clone();
    let t = TestApp::on(Kind::Mysql, Some(db), VendorSigningKey::generate()).await;
    let dir2 = tempfile::tempdir().unwrap();
    let mut l = layers(dir2.path(), Some(&url), MASTER_KEY_1, &t.vendor);
    l.flag("lease_ttl", Some("10s"));
    l.flag("lease_hold", Some("10s"));
    let short = App::start(l.build().unwrap()).await.unwrap();
    apply(&t, 1).await;
    let long = &t.app;

    let g = long.seats().grant(&req("alice", "a1", 120)).await.unwrap();
    // The short-hold instance answers from its read and (its own TTL fully
    // covered) writes nothing; forced to write, GREATEST keeps the longer.
    promised(renew_one(&short, "alice", g.lease).await);
    short
        .storage()
        .extend(
            "alice",
            &[g.lease],
            Duration::from_secs(10),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(recorded_expiry(long, g.lease).await, Some(g.expires_at));
    let p = promised(renew_one(long, "alice", g.lease).await);
    assert!(p > Duration::from_secs(55), "{p:?}");
}

/// A check read held up (here by a table lock another session holds; in
/// production, say, a connection to a database host that vanished) answers
/// its heartbeats with an error after its timeout (2 s) instead of holding
/// every later heartbeat of the instance behind it (one check read is in
/// flight per instance); once the lock goes, heartbeats are answered again
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_up_check_read_fails_its_heartbeats_and_the_instance_recovers() {
    use sqlx::Connection;
    let db = TestDb::new().await;
    let url = db.url.clone();
    let t = TestApp::on(Kind::Mysql, Some(db), VendorSigningKey::generate()).await;
    apply(&t, 1).await;
    let a = &t.app;
    let g = a.seats().grant(&req("alice", "a1", 120)).await.unwrap();
    promised(renew_one(a, "alice", g.lease).await);

    let mut locker = sqlx::MySqlConnection::connect(&url).await.unwrap();
    sqlx::query("LOCK TABLES slots WRITE")
        .execute(&mut locker)
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let held = tokio::time::timeout(Duration::from_secs(8), a.seats().renew("alice", &[g.lease]))
        .await
        .expect("the heartbeat waited for the lock instead of failing");
    let took = t0.elapsed();
    assert!(held.is_err(), "a held-up read answered: {held:?}");
    assert!(took < Duration::from_secs(4), "failed only after {took:?}");

    sqlx::query("UNLOCK TABLES")
        .execute(&mut locker)
        .await
        .unwrap();
    wait_for(
        "heartbeats answered again",
        Duration::from_secs(10),
        || async {
            match a.seats().renew("alice", &[g.lease]).await {
                Ok(r) if matches!(r[0], Renewal::Renewed(_)) => Some(()),
                _ => None,
            }
        },
    )
    .await;
}

testkit::both_backends!(reads_answer_while_the_recorded_expiry_covers_the_ttl);
