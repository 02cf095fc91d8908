//! `admin license remove` on both backends: the license's features stop
//! granting at once; a lease it granted is kept like a shrink keeps it
//! (retiring: alive to heartbeats until released, never revoked), and while
//! it lives another license of the same feature grants only what the new
//! total leaves; a re-apply brings the seats back.

use floatlm::domain::license::VendorSigningKey;
use floatlm::domain::seats::{Check, GrantRequest, LeaseRef, RequestId, SeatError};
use floatlm::storage::{RenewItem, SeatFailure, Storage};
use std::time::Duration;
use testkit::{def, record, test_keyring, Kind, TestStore};

fn req(holder: &str, rid: &str) -> GrantRequest {
    GrantRequest {
        feature: "cad".into(),
        request_id: RequestId::new(rid).unwrap(),
        holder: holder.into(),
        client_info: "u@h (t)".into(),
        hold: Duration::from_secs(60),
        promise: Duration::from_secs(60),
        instance_id: "i1".into(),
    }
}

async fn check(st: &dyn Storage, holder: &str, lease: LeaseRef) -> Check {
    let item = RenewItem {
        holder: holder.into(),
        leases: vec![lease],
    };
    st.check_batch(&[item])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .pop()
        .unwrap()
}

async fn remove_stops_grants_and_keeps_leases(kind: Kind) {
    let s = TestStore::new(kind).await;
    let st = s.storage.as_ref();
    let v = VendorSigningKey::generate();
    let ring = test_keyring();
    st.apply_license(&record(&def("L1", 1, "cad", 2), &v, &ring))
        .await
        .unwrap();
    let held = st.grant(&req("a", "a-1")).await.unwrap();

    assert_eq!(st.remove_license("nope").await.unwrap(), None);
    assert_eq!(st.remove_license("L1").await.unwrap(), Some(1));
    assert!(st.licenses().await.unwrap().is_empty());
    // No license grants `cad` any more.
    match st.grant(&req("b", "b-1")).await {
        Err(SeatFailure::Refused(SeatError::UnknownFeature(_))) => {}
        other => panic!("a removed license grants nothing: {other:?}"),
    }
    // The lease it granted is still alive to a heartbeat's check.
    assert!(
        matches!(check(st, "a", held.lease).await, Check::Live(_)),
        "a removed license's lease runs on like a shrink's retiring lease"
    );

    // Another license of 1 seat: the retiring lease still counts, so the
    // total stays at 1 until it is released.
    st.apply_license(&record(&def("L2", 1, "cad", 1), &v, &ring))
        .await
        .unwrap();
    match st.grant(&req("b", "b-2")).await {
        Err(SeatFailure::Refused(SeatError::NoSeat { .. })) => {}
        other => panic!("the live lease of the removed license uses L2's one seat: {other:?}"),
    }
    assert!(st.release("a", held.lease).await.unwrap().is_some());
    st.grant(&req("b", "b-3")).await.unwrap();

    // Re-applying L1 brings its seats back.
    st.apply_license(&record(&def("L1", 1, "cad", 2), &v, &ring))
        .await
        .unwrap();
    st.grant(&req("c", "c-1")).await.unwrap();
    st.grant(&req("c", "c-2")).await.unwrap();
    match st.grant(&req("c", "c-3")).await {
        Err(SeatFailure::Refused(SeatError::NoSeat { total, .. })) => assert_eq!(total, 3),
        other => panic!("3 seats in all: {other:?}"),
    }
}

testkit::both_backends!(remove_stops_grants_and_keeps_leases);
