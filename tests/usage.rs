//! Usage records on both backends: a scripted sequence of grants (single
//! and batched, from two instances), releases, a force release, an expiry
//! found when the slot is reused, an expiry found by the sweep, and denials
//! gives exactly the expected events, and the report's checkouts,
//! seat-hours and peak concurrency match the script.

use chrono::{DateTime, Utc};
use floatlm::domain::license::VendorSigningKey;
use floatlm::domain::seats::{Grant, GrantRequest, RequestId};
use floatlm::domain::usage::{report, Denial, UsageBy, UsageEvent};
use floatlm::storage::Storage;
use std::time::Duration;
use testkit::{def, record, test_keyring, wait_for, Kind, TestStore};

fn req(
    feature: &str,
    holder: &str,
    rid: &str,
    who: &str,
    inst: &str,
    hold: Duration,
) -> GrantRequest {
    GrantRequest {
        feature: feature.into(),
        request_id: RequestId::new(rid).unwrap(),
        holder: holder.into(),
        client_info: format!("{who} (client-{rid})"),
        hold,
        promise: SHORT,
        instance_id: inst.into(),
    }
}

const LONG: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_millis(400);

fn lease_of(g: &Grant) -> Option<(i64, i64, i64, i64)> {
    let l = g.lease;
    Some((l.feature_id, l.slot_no, l.lease_gen, l.nonce))
}

/// Waits until the database clock is past `t`.
async fn db_past(st: &dyn Storage, t: DateTime<Utc>) {
    wait_for(
        "the database clock to pass a lease expiry",
        Duration::from_secs(10),
        || async { (st.now().await.unwrap() > t).then_some(()) },
    )
    .await
}

async fn events(st: &dyn Storage) -> Vec<UsageEvent> {
    let from = DateTime::<Utc>::from_timestamp(0, 0).unwrap();
    let to = st.now().await.unwrap() + chrono::Duration::hours(1);
    st.usage_window(from, to, 10_000).await.unwrap()
}

async fn scripted_sequence(kind: Kind) {
    let s = TestStore::new(kind).await;
    let st = s.storage.as_ref();
    let v = VendorSigningKey::generate();
    st.apply_license(&record(&def("L1", 1, "cad", 2), &v, &test_keyring()))
        .await
        .unwrap();

    // 1. Two grants in one batch on instance i1: both seats.
    let mut b = st
        .grant_batch(&[
            req("cad", "id-a", "a-1", "ann@ws1", "i1", LONG),
            req("cad", "id-b", "b-1", "bob@corp.example@ws2", "i1", LONG),
        ])
        .await;
    let gb = b.pop().unwrap().unwrap();
    let ga = b.pop().unwrap().unwrap();
    // 2. A third is refused (the store answers; the App records the denial).
    assert!(st
        .grant(&req("cad", "id-c", "c-1", "cy@ws3", "i2", LONG))
        .await
        .is_err());
    // 3. ann releases through instance i2; bob is force-released.
    let a_end = st
        .release("id-a", ga.lease)
        .await
        .unwrap()
        .expect("released");
    let b_end_bound = st.force_release(gb.lease).await.unwrap().expect("revoked");
    // A force release holds the slot until the promise bound: wait it out.
    db_past(st, b_end_bound).await;
    // 4. cy gets a short lease on i2 and lets it expire; dan reuses it.
    let gc = st
        .grant(&req("cad", "id-c", "c-2", "cy@ws3", "i2", SHORT))
        .await
        .unwrap();
    db_past(st, gc.expires_at).await;
    let gd1 = st
        .grant(&req("cad", "id-d", "d-1", "dan@ws4", "i1", LONG))
        .await
        .unwrap();
    let gd2 = st
        .grant(&req("cad", "id-d", "d-2", "dan@ws4", "i1", SHORT))
        .await
        .unwrap();
    // The slot cy held must be one of dan's: the other seat was free.
    assert!(gd1.lease.slot_no == gc.lease.slot_no || gd2.lease.slot_no == gc.lease.slot_no);
    // 5. dan's short lease expires and nobody reuses the slot: the sweep
    // records it.
    db_past(st, gd2.expires_at).await;
    assert_eq!(st.sweep_expired(100).await.unwrap(), 1);
    assert_eq!(
        st.sweep_expired(100).await.unwrap(),
        0,
        "a sweep records an expiry once"
    );
    // 6. Two denials, written as one batch.
    let now = st.now().await.unwrap();
    let denial = |who: &str, reason: &str| Denial {
        at: now,
        feature: "cad".into(),
        identity: "id-e".into(),
        user: who.into(),
        host: "ws5".into(),
        address: "10.0.0.5".into(),
        instance: "i2".into(),
        reason: reason.into(),
    };
    st.record_denials(&[
        denial("eve", "all_seats_taken"),
        denial("eve", "auth_denied"),
    ])
    .await
    .unwrap();

    let got = events(st).await;
    let kinds: Vec<(String, Option<String>, Option<String>)> = got
        .iter()
        .map(|e| (e.event.clone(), e.identity.clone(), e.user.clone()))
        .collect();
    let want: Vec<(String, Option<String>, Option<String>)> = [
        ("grant", "id-a", "ann"),
        ("grant", "id-b", "bob@corp.example"),
        ("release", "id-a", "ann"),
        ("force_release", "id-b", "bob@corp.example"),
        ("grant", "id-c", "cy"),
        // cy's expiry is dated at its lease's end, before dan's grant.
        ("expiry", "id-c", "cy"),
        ("grant", "id-d", "dan"),
        ("grant", "id-d", "dan"),
        ("expiry", "id-d", "dan"),
        ("denial", "id-e", "eve"),
        ("denial", "id-e", "eve"),
    ]
    .iter()
    .map(|(e, i, u)| (e.to_string(), Some(i.to_string()), Some(u.to_string())))
    .collect();
    assert_eq!(kinds, want, "events: {got:#?}");

    // Columns: leases, hosts, instances, times, reasons.
    let by_event = |ev: &str, id: &str| -> Vec<&UsageEvent> {
        got.iter()
            .filter(|e| e.event == ev && e.identity.as_deref() == Some(id))
            .collect()
    };
    let a_grant = by_event("grant", "id-a")[0];
    assert_eq!(a_grant.lease, lease_of(&ga));
    assert_eq!(a_grant.at, ga.granted_at);
    assert_eq!(a_grant.host.as_deref(), Some("ws1"));
    assert_eq!(a_grant.instance.as_deref(), Some("i1"));
    // The release's row is dated by its own statement, a moment after the
    // clock read the release answered with.
    let a_rel = by_event("release", "id-a")[0].at;
    assert!(
        a_rel >= a_end && a_rel - a_end < chrono::Duration::seconds(5),
        "{a_rel} vs {a_end}"
    );
    let a_end = a_rel;
    assert_eq!(by_event("release", "id-a")[0].lease, lease_of(&ga));
    assert_eq!(by_event("force_release", "id-b")[0].lease, lease_of(&gb));
    let c_exp = by_event("expiry", "id-c")[0];
    assert_eq!((c_exp.at, c_exp.lease), (gc.expires_at, lease_of(&gc)));
    assert_eq!(c_exp.instance.as_deref(), Some("i2"));
    let d_exp = by_event("expiry", "id-d")[0];
    assert_eq!((d_exp.at, d_exp.lease), (gd2.expires_at, lease_of(&gd2)));
    let denials = by_event("denial", "id-e");
    assert_eq!(denials[0].reason.as_deref(), Some("all_seats_taken"));
    assert_eq!(denials[1].address.as_deref(), Some("10.0.0.5"));
    assert_eq!(denials[0].lease, None);

    // The report over the whole script, by identity, against the script's
    // own times (dan's long lease is still open: it counts until `to`).
    let b_end = by_event("force_release", "id-b")[0].at;
    let to = st.now().await.unwrap();
    let from = ga.granted_at;
    let hours =
        |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).num_microseconds().unwrap() as f64 / 3.6e9;
    let window = st.usage_window(from, to, 10_000).await.unwrap();
    let lines = report(&window, from, to, to, UsageBy::Identity);
    let line = |id: &str| {
        lines
            .iter()
            .find(|l| l.key == id)
            .unwrap_or_else(|| panic!("no line for {id}: {lines:?}"))
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(close(line("id-a").seat_hours, hours(ga.granted_at, a_end)));
    assert!(close(line("id-b").seat_hours, hours(gb.granted_at, b_end)));
    assert!(close(
        line("id-c").seat_hours,
        hours(gc.granted_at, gc.expires_at)
    ));
    assert!(close(
        line("id-d").seat_hours,
        hours(gd1.granted_at, to) + hours(gd2.granted_at, gd2.expires_at)
    ));
    assert_eq!(line("id-d").checkouts, 2);
    assert_eq!(line("id-d").peak_concurrency, 2);
    assert_eq!(line("id-e").denials, 2);
    let by_feature = report(&window, from, to, to, UsageBy::Feature);
    assert_eq!(by_feature.len(), 1);
    assert_eq!(by_feature[0].checkouts, 5);
    assert_eq!(by_feature[0].denials, 2);
    assert_eq!(by_feature[0].peak_concurrency, 2, "two seats, never more");

    // A window starting after ann's grant still counts the lease open at
    // its start: bob's grant is before `from2`, his end inside.
    let from2 = gb.granted_at + chrono::Duration::microseconds(1);
    let w2 = st.usage_window(from2, to, 10_000).await.unwrap();
    let l2 = report(&w2, from2, to, to, UsageBy::Identity);
    let b2 = l2
        .iter()
        .find(|l| l.key == "id-b")
        .expect("bob's open lease");
    assert_eq!(b2.checkouts, 0);
    assert!(close(b2.seat_hours, hours(from2, b_end)));

    // Purge in bounded chunks: everything before `to` goes, 3 rows a call.
    let after = to + chrono::Duration::microseconds(1);
    let mut purged = 0;
    for _ in 0..10 {
        let n = st.purge_usage(after, 3).await.unwrap();
        assert!(n <= 3);
        purged += n;
        if n == 0 {
            break;
        }
    }
    assert_eq!(purged as usize, got.len());
}

testkit::both_backends!(scripted_sequence);

/// A transaction that loses InnoDB's table-level AUTO-INC lock in a
/// deadlock (a release's usage-trigger insert against an INSERT … SELECT
/// such as the usage sweep's) gets error 1467, not 1213; it was rolled back
/// like any deadlock victim, so the storage layer must run it again.
#[tokio::test]
async fn an_auto_inc_deadlock_is_retried_like_any_deadlock() {
    use sqlx::{Connection, Executor};
    let db = testkit::TestDb::new().await;
    let mut setup = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    setup
        .execute(
            "CREATE TABLE s (id INT PRIMARY KEY, v INT) ENGINE=InnoDB;
             INSERT INTO s VALUES (1, 1), (2, 2);
             CREATE TABLE t (id BIGINT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB;",
        )
        .await
        .unwrap();
    let mut a = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    let mut b = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    // B holds row 2; A holds row 1, then takes the AUTO-INC lock and waits
    // for row 2; B's insert then waits for the AUTO-INC lock: a deadlock.
    b.execute("BEGIN").await.unwrap();
    b.execute("UPDATE s SET v = 20 WHERE id = 2").await.unwrap();
    a.execute("BEGIN").await.unwrap();
    a.execute("UPDATE s SET v = 10 WHERE id = 1").await.unwrap();
    let a_insert = tokio::spawn(async move {
        let r = a
            .execute("INSERT INTO t (v) SELECT v FROM s WHERE id IN (1, 2) LOCK IN SHARE MODE")
            .await
            .map(|_| ());
        (a, r)
    });
    // A is waiting for row 2 once the server lists its lock wait.
    testkit::wait_for(
        "the INSERT … SELECT to wait for row 2",
        Duration::from_secs(10),
        || {
            let url = db.url.clone();
            async move {
                let mut c = sqlx::MySqlConnection::connect(&url).await.ok()?;
                let n: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS")
                        .fetch_one(&mut c)
                        .await
                        .ok()?;
                (n > 0).then_some(())
            }
        },
    )
    .await;
    let b_insert = b
        .execute("INSERT INTO t (v) SELECT v FROM s WHERE id = 2")
        .await
        .map(|_| ());
    let (_a, a_result) = a_insert.await.unwrap();
    let err = b_insert
        .err()
        .or(a_result.err())
        .expect("one of the two transactions is the deadlock's victim");
    eprintln!("deadlock victim: {err}");
    assert!(
        floatlm::storage::is_retryable(&err),
        "the victim's error must be retried: {err}"
    );
}
