//! Round 4 attacks on the changes since 65f929d:
//!
//! * acd1c53 (`FORCE INDEX (slots_pick)` on every read of slots by state,
//!   retiring checks as `state > 0 AND state < 2`): concurrent grants from
//!   two instances (two pools on one MariaDB), lone and batched, racing for
//!   the last seats, through a shrink of one of two licenses of a feature,
//!   and with the shrunk license's leases released while the grants run.
//!   Each slot is taken once and the new total is never passed (pass).
//! * 53dc7e2 (force_release / release_own as LeaseStore default methods over
//!   `revoke_lease` and `bound_revoked`): a revoke that committed but whose
//!   answer was lost, asked again, answers "not live" and leaves the slot
//!   its whole recorded expiry (never shorter than a promise); two
//!   instances ending one lease at once end it once and bound it once
//!   (pass).
//! * 14b43b4 (`too_many_sessions` is 429): a client library whose session
//!   on an instance that filled up meanwhile is refused at its first
//!   request tries its other server (it took a non-5xx answer to a sealed
//!   request as final before; fixed in the client). Not a breach of the
//!   seat invariant either way: a seat was refused that another instance
//!   would give.

use floatlm::domain::license::VendorSigningKey;
use floatlm::domain::seats::{Check, GrantRequest, LeaseRef, SeatError};
use floatlm::storage::{RenewItem, SeatFailure, Storage};
use floatlm_client::{Client, Options};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use testkit::raw::{Answer, Raw};
use testkit::{
    def, layers, record, serve_in_process, test_keyring, Kind, TestDb, TestStore, MASTER_KEY_1,
};

const TTL: Duration = Duration::from_secs(60);

fn req(feature: &str, holder: &str, rid: &str) -> GrantRequest {
    testkit::grant_request(feature, holder, rid, TTL)
}

/// Fires `n` grant requests of `feature` at once, alternating between the
/// two stores and between a lone grant and a batch of two; returns the
/// leases granted (unexpected errors fail the test).
async fn burst(
    stores: &[Arc<dyn Storage>; 2],
    feature: &str,
    tag: &str,
    n: usize,
) -> Vec<LeaseRef> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0;
    while i < n {
        let st = stores[(i / 2) % 2].clone();
        let f = feature.to_string();
        if (i / 2) % 3 == 2 && i + 1 < n {
            let reqs = vec![
                req(&f, "h", &format!("{tag}-{i}")),
                req(&f, "h", &format!("{tag}-{}", i + 1)),
            ];
            tasks.spawn(async move { st.grant_batch(&reqs).await });
            i += 2;
        } else {
            let r = req(&f, "h", &format!("{tag}-{i}"));
            tasks.spawn(async move { vec![st.grant(&r).await] });
            i += 1;
        }
    }
    let mut out = Vec::new();
    while let Some(j) = tasks.join_next().await {
        for r in j.unwrap() {
            match r {
                Ok(g) => out.push(g.lease),
                Err(SeatFailure::Refused(SeatError::NoSeat { .. })) => {}
                Err(e) => panic!("{tag}: unexpected answer {e:?}"),
            }
        }
    }
    out
}

/// Live leases of `feature` by the database's own clock.
async fn live_in_db(st: &dyn Storage, feature: &str) -> usize {
    st.leases()
        .await
        .unwrap()
        .iter()
        .filter(|l| l.feature == feature)
        .count()
}

/// acd1c53: with the pick index forced, concurrent grants from two
/// instances (lone and batched) still take each slot once and never more
/// slots than the feature has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_race_for_the_last_seats_and_take_each_once() {
    let s = TestStore::new(Kind::Mysql).await;
    let stores = [s.storage.clone(), s.second_pool().await];
    let v = VendorSigningKey::generate();
    s.storage
        .apply_license(&record(&def("L1", 1, "race", 5), &v, &test_keyring()))
        .await
        .unwrap();
    for round in 0..3 {
        let got = burst(&stores, "race", &format!("r{round}"), 16).await;
        let slots: BTreeSet<(i64, i64)> = got.iter().map(|l| (l.feature_id, l.slot_no)).collect();
        assert_eq!(got.len(), 5, "round {round}: {got:?}");
        assert_eq!(
            slots.len(),
            5,
            "round {round}: a slot was granted twice: {got:?}"
        );
        assert_eq!(live_in_db(s.storage.as_ref(), "race").await, 5);
        for l in got {
            assert!(s.storage.release("h", l).await.unwrap().is_some());
        }
    }
}

/// acd1c53: a feature of two licenses whose first shrank below the leases
/// it holds. Grants through both instances at once, lone and batched, give
/// no seat until the live count is below the new total, and then only up
/// to it: the retiring checks (`state > 0 AND state < 2`, pick index
/// forced) still see every retiring slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_through_a_two_license_shrink_never_pass_the_new_total() {
    let s = TestStore::new(Kind::Mysql).await;
    let stores = [s.storage.clone(), s.second_pool().await];
    let (v, ring) = (VendorSigningKey::generate(), test_keyring());
    let st = s.storage.as_ref();
    st.apply_license(&record(&def("LA", 1, "cad", 4), &v, &ring))
        .await
        .unwrap();
    st.apply_license(&record(&def("LB", 1, "cad", 2), &v, &ring))
        .await
        .unwrap();
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(
            st.grant(&req("cad", "h", &format!("held-{i}")))
                .await
                .unwrap()
                .lease,
        );
    }
    assert!(
        held.iter().all(|l| l.feature_id == held[0].feature_id),
        "the first license's seats are taken first: {held:?}"
    );
    // LA: 4 -> 1. Licensed now: 1 + 2 = 3; live: 4.
    st.apply_license(&record(&def("LA", 2, "cad", 1), &v, &ring))
        .await
        .unwrap();
    const TOTAL: usize = 3;
    let mut live = held.len();
    let before = burst(&stores, "cad", "debt", 8).await;
    assert!(
        before.is_empty(),
        "granted while 4 of 3 seats are live: {before:?}"
    );
    for (k, l) in held.iter().enumerate() {
        assert!(st.release("h", *l).await.unwrap().is_some());
        live -= 1;
        let got = burst(&stores, "cad", &format!("s{k}"), 8).await;
        let room = TOTAL.saturating_sub(live);
        assert!(
            got.len() <= room,
            "after release {k}: {live} live of {TOTAL}, {} granted: {got:?}",
            got.len()
        );
        live += got.len();
        assert_eq!(live_in_db(st, "cad").await, live, "after release {k}");
    }
    assert!(live <= TOTAL, "{live} live of {TOTAL}");
}

/// acd1c53: as above, but the held leases are released while grants from
/// both instances keep coming (lone and batched): the new grants never
/// leave more live leases than the new total. Leases granted here are
/// never released, so one over-grant at any moment shows at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_racing_grants_through_a_two_license_shrink_never_over_grant() {
    let s = TestStore::new(Kind::Mysql).await;
    let stores = [s.storage.clone(), s.second_pool().await];
    let (v, ring) = (VendorSigningKey::generate(), test_keyring());
    for run in 0..3 {
        let st = s.storage.clone();
        let f = format!("cad{run}");
        st.apply_license(&record(&def(&format!("A{run}"), 1, &f, 4), &v, &ring))
            .await
            .unwrap();
        st.apply_license(&record(&def(&format!("B{run}"), 1, &f, 2), &v, &ring))
            .await
            .unwrap();
        let mut held = Vec::new();
        for i in 0..4 {
            held.push(
                st.grant(&req(&f, "h", &format!("held{run}-{i}")))
                    .await
                    .unwrap()
                    .lease,
            );
        }
        st.apply_license(&record(&def(&format!("A{run}"), 2, &f, 1), &v, &ring))
            .await
            .unwrap();
        const TOTAL: usize = 3;
        let releaser = {
            let st = st.clone();
            tokio::spawn(async move {
                for l in held {
                    tokio::time::sleep(Duration::from_millis(7)).await;
                    assert!(st.release("h", l).await.unwrap().is_some());
                }
            })
        };
        let mut granted = Vec::new();
        for wave in 0..12 {
            granted.extend(burst(&stores, &f, &format!("w{run}-{wave}"), 6).await);
        }
        releaser.await.unwrap();
        granted.extend(burst(&stores, &f, &format!("last{run}"), 6).await);
        let live = live_in_db(st.as_ref(), &f).await;
        assert!(
            granted.len() <= TOTAL && live <= TOTAL,
            "run {run}: {} granted, {live} live of {TOTAL} seats: {granted:?}",
            granted.len()
        );
        assert_eq!(
            granted.len(),
            TOTAL,
            "run {run}: every seat is granted again in the end"
        );
    }
}

/// 53dc7e2: the revoke (first step) committed but its answer was lost, so
/// the caller never ran the bounding step; asked again, the release says
/// "not live" (true: the lease ended) and the slot keeps its whole recorded
/// expiry, so no promise given for it can outlive the seat being taken.
async fn revoke_answer_lost(kind: Kind) {
    let s = TestStore::new(kind).await;
    let st = s.storage.as_ref();
    let v = VendorSigningKey::generate();
    st.apply_license(&record(&def("L1", 1, "one", 1), &v, &test_keyring()))
        .await
        .unwrap();
    let g = st.grant(&req("one", "h1", "x")).await.unwrap();
    let expires = st.leases().await.unwrap()[0].expires_at;
    // What the lost-answer commit left: the first step alone.
    assert!(st.revoke_lease(None, g.lease).await.unwrap());
    // Asked again: by the operator, and by the holder's own identity.
    assert!(st.force_release(g.lease).await.unwrap().is_none());
    assert!(st.release_own("h1", g.lease).await.unwrap().is_none());
    let rows = st.leases().await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].revoked, "{rows:?}");
    assert_eq!(
        rows[0].expires_at, expires,
        "the unbounded slot keeps its expiry"
    );
    // The holder hears it lost the seat; nobody else gets it yet.
    let checks = st
        .check_batch(&[RenewItem {
            holder: "h1".into(),
            leases: vec![g.lease],
        }])
        .await
        .unwrap();
    assert_eq!(checks, vec![vec![Check::Lost]]);
    assert!(matches!(
        st.grant(&req("one", "h2", "y")).await,
        Err(SeatFailure::Refused(SeatError::NoSeat { .. }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_whose_answer_was_lost_keeps_the_seat_mysql() {
    revoke_answer_lost(Kind::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_whose_answer_was_lost_keeps_the_seat_sqlite() {
    revoke_answer_lost(Kind::Sqlite).await;
}

/// 53dc7e2: two instances force-release one lease at once (an operator
/// retrying through another instance, or a revocation followed on two):
/// exactly one says it ended it, and the seat stays taken for at least the
/// lease's promise past the revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_force_releases_of_one_lease_end_it_once_and_bound_it_once() {
    let s = TestStore::new(Kind::Mysql).await;
    let stores = [s.storage.clone(), s.second_pool().await];
    let v = VendorSigningKey::generate();
    let st = s.storage.as_ref();
    for round in 0..5 {
        let feature = format!("one{round}");
        st.apply_license(&record(
            &def(&format!("L{round}"), 1, &feature, 1),
            &v,
            &test_keyring(),
        ))
        .await
        .unwrap();
        let holder = format!("h{round}");
        let g = st.grant(&req(&feature, &holder, "g")).await.unwrap();
        let before = st.now().await.unwrap();
        let (a, b) = tokio::join!(
            stores[0].force_release(g.lease),
            stores[1].release_own(&holder, g.lease)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.is_some() != b.is_some(), "round {round}: {a:?} {b:?}");
        let free_at = a.or(b).unwrap();
        // Not before the lease's own expiry nor before its promise (TTL)
        // from the revoke, whichever comes first.
        let floor = g
            .expires_at
            .min(before + chrono::Duration::from_std(TTL).unwrap());
        assert!(
            free_at >= floor,
            "round {round}: free at {free_at}, before {floor} (revoked after {before})"
        );
        assert!(matches!(
            st.grant(&req(&feature, "other", "o")).await,
            Err(SeatFailure::Refused(SeatError::NoSeat { .. }))
        ));
    }
}

/// 14b43b4: a client library connected (handshake done, session pending)
/// to an instance that fills up before its first request. The first
/// request is refused `too_many_sessions` — before, a 503 made the
/// library resume elsewhere; a 429 on a sealed request is a final error,
/// so the checkout fails although another instance has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_refused_429_at_its_first_request_fails_over() {
    let db = TestDb::new().await;
    let vendor = VendorSigningKey::generate();
    let (da, dbb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut la = layers(da.path(), Some(db.url.as_str()), MASTER_KEY_1, &vendor);
    la.flag("max_sessions", Some("1"));
    let app_a = floatlm::app::App::start(la.build().unwrap()).await.unwrap();
    let lb = layers(dbb.path(), Some(db.url.as_str()), MASTER_KEY_1, &vendor);
    let app_b = floatlm::app::App::start(lb.build().unwrap()).await.unwrap();
    let text = vendor.sign(&def("L1", 1, "cad", 3)).unwrap();
    app_a.licenses().apply_license(&text).await.unwrap();
    let (_, ident) = app_a.access().create_identity("x", None).await.unwrap();
    let (lic_a, _, _sa) = serve_in_process(app_a.clone()).await;
    let (lic_b, _, _sb) = serve_in_process(app_b.clone()).await;
    let cred = format!("{}:{}", ident.id, ident.secret.expose());
    let opts = Options {
        group: Some("near".into()),
        retry_interval: Duration::from_millis(500),
        request_timeout: Duration::from_secs(3),
        ..Options::default()
    };
    // Its own group first: the session opens on A (pending until its first request).
    let client = Client::connect(
        &[
            format!("{cred}@near:{lic_a}"),
            format!("{cred}@far:{lic_b}"),
        ],
        opts,
    )
    .await
    .unwrap();
    // Another client takes A's one session meanwhile.
    let other = Raw::connect(&lic_a, &format!("{cred}@{lic_a}")).await;
    match other
        .call(
            "",
            &floatlm_protocol::messages::Request::Info { features: vec![] },
        )
        .await
    {
        Answer::Sealed(_) => {}
        a => panic!("the other client was refused: {a:?}"),
    }
    assert_eq!(app_a.admission().session_counts().active, 1);
    let r = client.checkout("cad").await;
    assert!(
        r.is_ok(),
        "the checkout failed although instance B has free seats and room: {:?}",
        r.err()
    );
}
