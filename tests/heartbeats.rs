//! Heartbeats answered from memory: the database keeps a lease `lease_hold`
//! long, and an instance writes only when less than `lease_ttl` (plus a
//! clock margin) of the recorded expiry is left.

mod common;

use common::{def, layers, wait_for, Kind, TestApp, TestDb, MASTER_KEY_1};
use floatlm::app::App;
use floatlm::domain::license::VendorSigningKey;
use floatlm::domain::seats::{GrantRequest, LeaseRef, Renewal, RequestId, SeatError};
use std::time::Duration;

fn req(holder: &str, rid: &str, ttl_s: u64) -> GrantRequest {
    GrantRequest {
        feature: "cad".into(),
        request_id: RequestId::new(rid).unwrap(),
        holder: holder.into(),
        client_info: String::new(),
        ttl: Duration::from_secs(ttl_s),
        instance_id: "i".into(),
    }
}

async fn apply(t: &TestApp, seats: u32) {
    let text = t.vendor.sign(&def("L1", 1, "cad", seats)).unwrap();
    t.app.apply_license(&text).await.unwrap();
}

fn counts(app: &App) -> (u64, u64) {
    let c = app.heartbeat_counts();
    (
        c["renewed_from_memory"].as_u64().unwrap(),
        c["renewed_by_write"].as_u64().unwrap(),
    )
}

async fn recorded_expiry(app: &App, lease: LeaseRef) -> Option<chrono::DateTime<chrono::Utc>> {
    app.storage
        .leases()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.lease == lease)
        .map(|l| l.expires_at)
}

async fn renew_one(app: &App, holder: &str, lease: LeaseRef) -> Renewal {
    app.renew(holder, &[lease]).await.unwrap()[0]
}

async fn memory_answers_while_the_recorded_expiry_covers_the_ttl(kind: Kind) {
    let t = TestApp::new(kind).await;
    let app = &t.app;
    assert_eq!(app.config.lease_ttl, Duration::from_secs(60));
    assert_eq!(app.config.lease_hold, Duration::from_secs(120));
    apply(&t, 4).await;

    // Granted for lease_hold: heartbeats cost no write.
    let g = app.grant(&req("alice", "a1", 120)).await.unwrap();
    assert_eq!(
        renew_one(app, "alice", g.lease).await,
        Renewal::Renewed(g.expires_at)
    );
    assert_eq!(
        renew_one(app, "alice", g.lease).await,
        Renewal::Renewed(g.expires_at)
    );
    assert_eq!(counts(app), (2, 0));
    assert_eq!(recorded_expiry(app, g.lease).await, Some(g.expires_at));
    // The promise to the client is lease_ttl, never more than is recorded.
    assert!(app.promise(g.expires_at) <= app.config.lease_ttl);
    assert!(app.promise(g.expires_at) > Duration::from_secs(55));

    // Another holder naming the lease is not answered from memory (and loses).
    assert_eq!(renew_one(app, "mallory", g.lease).await, Renewal::Lost);
    assert_eq!(counts(app), (2, 1));

    // Only 30 s recorded: less than the TTL is left, so the heartbeat writes,
    // and the database then holds lease_hold again.
    let short = app.grant(&req("bob", "b1", 30)).await.unwrap();
    let Renewal::Renewed(e) = renew_one(app, "bob", short.lease).await else {
        panic!("bob's lease should renew");
    };
    assert!(
        e - short.expires_at > chrono::Duration::seconds(80),
        "{e} vs {}",
        short.expires_at
    );
    assert_eq!(recorded_expiry(app, short.lease).await, Some(e));
    assert_eq!(counts(app), (2, 2));
    assert_eq!(
        renew_one(app, "bob", short.lease).await,
        Renewal::Renewed(e)
    );
    assert_eq!(counts(app), (3, 2));

    // A mixed heartbeat: one from memory, one written, in the order sent.
    let c = app.grant(&req("alice", "a2", 30)).await.unwrap();
    let r = app.renew("alice", &[g.lease, c.lease]).await.unwrap();
    assert_eq!(r[0], Renewal::Renewed(g.expires_at));
    assert!(matches!(r[1], Renewal::Renewed(e) if e > c.expires_at));
    assert_eq!(counts(app), (4, 3));

    // 45 s recorded: more than half the TTL, so the heartbeat is answered at
    // once with what is left (a shorter promise) and the lease is extended
    // in the background; the next heartbeat finds the new expiry.
    let due = app.grant(&req("carol", "d1", 45)).await.unwrap();
    assert_eq!(
        renew_one(app, "carol", due.lease).await,
        Renewal::Renewed(due.expires_at)
    );
    assert!(app.promise(due.expires_at) < Duration::from_secs(45));
    assert!(app.promise(due.expires_at) > Duration::from_secs(30));
    assert_eq!(counts(app), (5, 4));
    let extended = wait_for(
        "the background renewal",
        Duration::from_secs(10),
        || async {
            recorded_expiry(app, due.lease)
                .await
                .filter(|e| *e > due.expires_at)
        },
    )
    .await;
    let again = wait_for(
        "the remembered new expiry",
        Duration::from_secs(10),
        || async {
            match renew_one(app, "carol", due.lease).await {
                Renewal::Renewed(e) if e == extended => Some(e),
                _ => None,
            }
        },
    )
    .await;
    assert!(again - due.expires_at > chrono::Duration::seconds(60));

    // Released here: forgotten, so the next heartbeat asks the database.
    assert!(app.release("alice", g.lease).await.unwrap());
    let before = counts(app);
    assert_eq!(renew_one(app, "alice", g.lease).await, Renewal::Lost);
    assert_eq!(counts(app), (before.0, before.1 + 1));

    // Force-released on this instance: the holder learns at once.
    app.force_release(short.lease).await.unwrap();
    assert_eq!(renew_one(app, "bob", short.lease).await, Renewal::Lost);
}

/// A force release on one instance reaches what another remembers once it
/// looks at the cluster's force-release count (every cluster heartbeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_release_elsewhere_clears_what_an_instance_remembers() {
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
    let g = a.grant(&req("alice", "a1", 120)).await.unwrap();
    assert_eq!(
        renew_one(a, "alice", g.lease).await,
        Renewal::Renewed(g.expires_at)
    );
    assert!(matches!(
        other.grant(&req("bob", "b1", 120)).await,
        Err(SeatError::NoSeat { .. })
    ));

    other.force_release(g.lease).await.unwrap();
    other.grant(&req("bob", "b2", 120)).await.unwrap();
    a.check_revocations().await.unwrap();
    assert_eq!(renew_one(a, "alice", g.lease).await, Renewal::Lost);
    assert_eq!(counts(a), (1, 1));
    // An unrelated look changes nothing more.
    a.check_revocations().await.unwrap();
    assert_eq!(renew_one(a, "alice", g.lease).await, Renewal::Lost);
}

both_backends!(memory_answers_while_the_recorded_expiry_covers_the_ttl);
