//! One conformance suite for the Storage trait, run on SQLite and MariaDB.

use chrono::{DateTime, Utc};
use floatlm::crypto::SealedColumn;
use floatlm::domain::license::VendorSigningKey;
use floatlm::domain::seats::{Check, GrantRequest, LeaseRef, RequestId, SeatError};
use floatlm::storage::SeatFailure;
use floatlm::storage::{
    usage_by_name, ApplyOutcome, Extension, InstanceBeat, RenewItem, Storage, StorageError,
};
use std::time::Duration;
use testkit::{def, record, test_keyring, wait_for, Kind, TestStore};

fn req(feature: &str, holder: &str, rid: &str, ttl: Duration) -> GrantRequest {
    GrantRequest {
        feature: feature.into(),
        request_id: RequestId::new(rid).unwrap(),
        holder: holder.into(),
        client_info: "test".into(),
        hold: ttl,
        promise: ttl,
        instance_id: "i-test".into(),
    }
}

/// Extends `leases` of `holder` to at least now + `hold`: the database time of
/// each write, None for a lease that is gone.
async fn renew(
    st: &dyn Storage,
    holder: &str,
    leases: &[LeaseRef],
    hold: Duration,
) -> Vec<Option<DateTime<Utc>>> {
    st.extend(holder, leases, hold, hold)
        .await
        .unwrap()
        .into_iter()
        .map(|e| match e {
            Extension::Extended(at) => Some(at),
            Extension::Lost => None,
            Extension::Busy => panic!("no other transaction holds a row here"),
        })
        .collect()
}

/// A cluster heartbeat of instance `id` (version 0.1.0, key k1, TTL 60 s).
fn beat<'a>(id: &'a str, address: &'a str, admin: &'a str, fresh: bool) -> InstanceBeat<'a> {
    InstanceBeat {
        id,
        address,
        admin_address: admin,
        version: "0.1.0",
        key_ids: "k1:00",
        lease_ttl_ms: 60_000,
        fresh,
    }
}

/// What one check read says about each of `leases` of `holder`.
async fn check(st: &dyn Storage, holder: &str, leases: &[LeaseRef]) -> Vec<Check> {
    let item = RenewItem {
        holder: holder.into(),
        leases: leases.to_vec(),
    };
    st.check_batch(&[item]).await.unwrap().pop().unwrap()
}

const TTL: Duration = Duration::from_secs(60);

async fn store_with(kind: Kind, feature: &str, seats: u32) -> (TestStore, VendorSigningKey) {
    let s = TestStore::new(kind).await;
    let v = VendorSigningKey::generate();
    let out = s
        .storage
        .apply_license(&record(&def("L1", 1, feature, seats), &v, &test_keyring()))
        .await
        .unwrap();
    assert_eq!(out, ApplyOutcome::Created);
    (s, v)
}

async fn usage(st: &dyn Storage, name: &str) -> (i64, i64, i64) {
    let u = usage_by_name(&st.feature_rows().await.unwrap());
    let f = u.iter().find(|f| f.name == name).expect("feature listed");
    (f.total, f.used, f.free)
}

async fn grants_up_to_n_then_refuses(kind: Kind) {
    let (s, _) = store_with(kind, "cad", 3).await;
    let st = s.storage.as_ref();
    let mut leases = Vec::new();
    for i in 0..3 {
        let g = st
            .grant(&req("cad", "h1", &format!("r{i}"), TTL))
            .await
            .unwrap();
        assert!(!g.replayed);
        assert!(g.expires_at > g.granted_at);
        leases.push(g.lease);
    }
    let err = st.grant(&req("cad", "h1", "r3", TTL)).await.unwrap_err();
    assert!(
        matches!(
            err,
            SeatFailure::Refused(SeatError::NoSeat { total: 3, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().starts_with("No license"), "{err}");
    assert_eq!(usage(st, "cad").await, (3, 3, 0));
    // Release frees exactly one; a second release of the same lease is a no-op.
    assert!(st.release("h1", leases[1]).await.unwrap().is_some());
    assert!(st.release("h1", leases[1]).await.unwrap().is_none());
    assert_eq!(usage(st, "cad").await, (3, 2, 1));
    let g = st.grant(&req("cad", "h2", "r4", TTL)).await.unwrap();
    assert_eq!(g.lease.slot_no, leases[1].slot_no);
    assert!(
        g.lease.lease_gen > leases[1].lease_gen,
        "lease_gen is a fencing token and must rise"
    );
    // The old lease of that slot is fenced off.
    assert_eq!(renew(st, "h1", &[leases[1]], TTL).await, vec![None]);
    assert_eq!(check(st, "h1", &[leases[1]]).await, vec![Check::Lost]);
    assert!(st.release("h1", leases[1]).await.unwrap().is_none());
}

async fn request_ids_make_grants_idempotent(kind: Kind) {
    let (s, v) = store_with(kind, "cad", 2).await;
    let st = s.storage.as_ref();
    let a = st.grant(&req("cad", "h1", "s1:1", TTL)).await.unwrap();
    let b = st.grant(&req("cad", "h1", "s1:1", TTL)).await.unwrap();
    assert!(b.replayed);
    assert_eq!(a.lease, b.lease);
    assert_eq!(
        usage(st, "cad").await.1,
        1,
        "a retry must not take a second seat"
    );
    // Same request id from another holder is a different request.
    let c = st.grant(&req("cad", "h2", "s1:1", TTL)).await.unwrap();
    assert_ne!(c.lease, a.lease);
    // Same id, other feature: refused, nothing granted.
    st.apply_license(&record(&def("L2", 1, "other", 1), &v, &test_keyring()))
        .await
        .unwrap();
    let e = st
        .grant(&req("other", "h1", "s1:1", TTL))
        .await
        .unwrap_err();
    assert!(
        matches!(e, SeatFailure::Refused(SeatError::RequestIdReused(_))),
        "{e}"
    );
    assert_eq!(usage(st, "other").await.1, 0);
    // Concurrent retries of one request id grant once.
    let mut tasks = Vec::new();
    let shared = s.storage.clone();
    st.release("h1", a.lease).await.unwrap();
    st.release("h2", c.lease).await.unwrap();
    for _ in 0..8 {
        let st = shared.clone();
        tasks.push(tokio::spawn(async move {
            st.grant(&req("cad", "h9", "race:1", TTL))
                .await
                .unwrap()
                .lease
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    assert!(got.windows(2).all(|w| w[0] == w[1]), "{got:?}");
    assert_eq!(usage(st, "cad").await.1, 1);
}

async fn renew_extends_and_expiry_frees(kind: Kind) {
    let (s, _) = store_with(kind, "cad", 1).await;
    let st = s.storage.as_ref();
    let short = Duration::from_millis(300);
    let g = st.grant(&req("cad", "h1", "a", short)).await.unwrap();
    let r = renew(st, "h1", &[g.lease], Duration::from_secs(2)).await;
    let Some(at) = r[0] else {
        panic!("renew failed")
    };
    let until = at + chrono::Duration::seconds(2);
    assert!(until > g.expires_at);
    let Check::Live(live) = &check(st, "h1", &[g.lease]).await[0] else {
        panic!("the renewed lease reads as live")
    };
    assert!(live.expires_at >= until);
    // A renewal never shortens what is recorded (another instance's longer hold).
    assert!(renew(st, "h1", &[g.lease], Duration::from_millis(100)).await[0].is_some());
    let Check::Live(after) = &check(st, "h1", &[g.lease]).await[0] else {
        panic!("still live")
    };
    assert_eq!(after.expires_at, live.expires_at);
    // Wrong holder cannot renew or release.
    assert_eq!(renew(st, "h2", &[g.lease], TTL).await, vec![None]);
    assert_eq!(check(st, "h2", &[g.lease]).await, vec![Check::Lost]);
    assert!(st.release("h2", g.lease).await.unwrap().is_none());
    assert!(matches!(
        st.grant(&req("cad", "h2", "b", TTL)).await,
        Err(SeatFailure::Refused(SeatError::NoSeat { .. }))
    ));
    // Left alone, the lease expires and the next grant reclaims the slot.
    let mut n = 0;
    let g2 = wait_for(
        "the expired lease to be reclaimed",
        Duration::from_secs(10),
        || {
            n += 1;
            let rid = format!("c{n}");
            async move { st.grant(&req("cad", "h2", &rid, TTL)).await.ok() }
        },
    )
    .await;
    assert_eq!(g2.lease.slot_no, g.lease.slot_no);
    assert!(g2.lease.lease_gen > g.lease.lease_gen);
    assert!(
        g2.granted_at >= until,
        "a slot is re-granted only after its lease expired"
    );
    assert_eq!(renew(st, "h1", &[g.lease], TTL).await, vec![None]);
}

async fn batch_renew_reports_each_lease(kind: Kind) {
    let (s, _) = store_with(kind, "cad", 3).await;
    let st = s.storage.as_ref();
    let a = st.grant(&req("cad", "h1", "a", TTL)).await.unwrap().lease;
    let b = st.grant(&req("cad", "h1", "b", TTL)).await.unwrap().lease;
    st.release("h1", b).await.unwrap();
    let bogus = LeaseRef {
        feature_id: 999,
        slot_no: 0,
        lease_gen: 1,
        nonce: 7,
    };
    // The same lease with another nonce (a lease id repeated after the
    // database went back in time) is not this lease.
    let twin = LeaseRef {
        nonce: a.nonce ^ 1,
        ..a
    };
    let newer = LeaseRef {
        lease_gen: a.lease_gen + 5,
        ..a
    };
    let r = renew(st, "h1", &[a, b, bogus, twin, newer], TTL).await;
    assert!(r[0].is_some());
    assert_eq!(&r[1..], &[None, None, None, None]);
    let c = check(st, "h1", &[a, b, bogus, twin, newer]).await;
    assert!(matches!(&c[0], Check::Live(l) if l.feature == "cad" && l.cap == TTL));
    assert_eq!(
        &c[1..],
        &[Check::Lost, Check::Lost, Check::Lost, Check::WentBack]
    );
}

async fn unknown_expired_and_future_features(kind: Kind) {
    let s = TestStore::new(kind).await;
    let st = s.storage.as_ref();
    let v = VendorSigningKey::generate();
    let ring = test_keyring();
    assert!(matches!(
        st.grant(&req("nope", "h", "a", TTL)).await,
        Err(SeatFailure::Refused(SeatError::UnknownFeature(_)))
    ));
    let mut d = def("OLD", 1, "old", 2);
    d.features[0].expires = Some("2020-01-01T00:00:00Z".parse().unwrap());
    st.apply_license(&record(&d, &v, &ring)).await.unwrap();
    let e = st.grant(&req("old", "h", "b", TTL)).await.unwrap_err();
    assert!(
        matches!(e, SeatFailure::Refused(SeatError::Expired(_))),
        "{e}"
    );
    let mut d = def("NEW", 1, "future", 2);
    d.features[0].not_before = Some("2099-01-01T00:00:00Z".parse().unwrap());
    st.apply_license(&record(&d, &v, &ring)).await.unwrap();
    assert!(matches!(
        st.grant(&req("future", "h", "c", TTL)).await,
        Err(SeatFailure::Refused(SeatError::Expired(_)))
    ));
    assert_eq!(usage(st, "old").await, (0, 0, 0));
}

async fn apply_is_versioned(kind: Kind) {
    let (s, v) = store_with(kind, "cad", 2).await;
    let st = s.storage.as_ref();
    let ring = test_keyring();
    let same = record(&def("L1", 1, "cad", 2), &v, &ring);
    // Ed25519 signatures are deterministic: the same definition is the same file.
    assert_eq!(
        st.apply_license(&same).await.unwrap(),
        ApplyOutcome::Unchanged
    );
    let changed = record(&def("L1", 1, "cad", 3), &v, &ring);
    let e = st.apply_license(&changed).await.unwrap_err();
    assert!(
        matches!(e, StorageError::Conflict(_)) && e.to_string().contains("higher serial"),
        "{e}"
    );
    let v2 = record(&def("L1", 2, "cad", 4), &v, &ring);
    assert_eq!(
        st.apply_license(&v2).await.unwrap(),
        ApplyOutcome::Replaced { previous_serial: 1 }
    );
    assert_eq!(usage(st, "cad").await, (4, 0, 4));
    let older = record(&def("L1", 1, "cad", 9), &v, &ring);
    assert!(st
        .apply_license(&older)
        .await
        .unwrap_err()
        .to_string()
        .contains("older"));
    assert_eq!(usage(st, "cad").await, (4, 0, 4));
    // Two licenses of one feature add up.
    st.apply_license(&record(&def("L2", 1, "cad", 1), &v, &ring))
        .await
        .unwrap();
    assert_eq!(usage(st, "cad").await, (5, 0, 5));
    // A license that drops a feature retires its slots.
    st.apply_license(&record(&def("L2", 2, "else", 1), &v, &ring))
        .await
        .unwrap();
    assert_eq!(usage(st, "cad").await, (4, 0, 4));
    assert_eq!(st.licenses().await.unwrap().len(), 2);
}

async fn shrinking_never_revokes_and_converges(kind: Kind) {
    let (s, v) = store_with(kind, "cad", 4).await;
    let st = s.storage.as_ref();
    let ring = test_keyring();
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(
            st.grant(&req("cad", "h", &format!("g{i}"), TTL))
                .await
                .unwrap()
                .lease,
        );
    }
    // 4 -> 1 with 3 held: the free slot retires, two held slots go retiring.
    st.apply_license(&record(&def("L1", 2, "cad", 1), &v, &ring))
        .await
        .unwrap();
    assert_eq!(usage(st, "cad").await, (1, 3, 0));
    for l in &held {
        assert!(
            renew(st, "h", &[*l], TTL).await[0].is_some(),
            "no live lease is revoked"
        );
    }
    assert!(matches!(
        st.grant(&req("cad", "x", "n1", TTL)).await,
        Err(SeatFailure::Refused(SeatError::NoSeat { total: 1, .. }))
    ));
    // Releasing leases never lets the live count exceed the new size again.
    for (i, l) in held.iter().enumerate() {
        st.release("h", *l).await.unwrap();
        let _ = st.grant(&req("cad", "x", &format!("m{i}"), TTL)).await;
        let (total, used, _) = usage(st, "cad").await;
        assert_eq!(total, 1);
        assert!(
            used <= (held.len() - i - 1).max(1) as i64,
            "used {used} after {} releases",
            i + 1
        );
    }
    let leases = st.leases().await.unwrap();
    assert_eq!(leases.len(), 1);
    // Growing again brings the seats back.
    st.apply_license(&record(&def("L1", 3, "cad", 5), &v, &ring))
        .await
        .unwrap();
    assert_eq!(usage(st, "cad").await, (5, 1, 4));
}

/// Group commit of grants and releases answers each request as a grant or
/// release alone would, whatever else shares its batch.
async fn batch_grant_and_release(kind: Kind) {
    let (s, v) = store_with(kind, "cad", 3).await;
    let ring = test_keyring();
    let st = s.storage.as_ref();
    st.apply_license(&record(&def("L2", 1, "cam", 1), &v, &ring))
        .await
        .unwrap();
    let batch = [
        req("cad", "h1", "b1", TTL),
        req("cad", "h1", "b2", TTL),
        req("cam", "h2", "c1", TTL),
        req("cad", "h2", "b3", TTL),
        req("cad", "h1", "b4", TTL),
        req("nope", "h1", "x1", TTL),
        req("cam", "h2", "c2", TTL),
    ];
    let out = st.grant_batch(&batch).await;
    assert_eq!(out.len(), batch.len());
    let lease = |i: usize| out[i].as_ref().unwrap().lease;
    let mut slots: Vec<_> = [0, 1, 3].iter().map(|&i| lease(i)).collect();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), 3, "three different cad slots: {out:?}");
    assert!(
        matches!(
            &out[4],
            Err(SeatFailure::Refused(SeatError::NoSeat { total: 3, .. }))
        ),
        "{:?}",
        out[4]
    );
    assert_eq!(out[2].as_ref().unwrap().feature, "cam");
    assert!(
        matches!(
            &out[6],
            Err(SeatFailure::Refused(SeatError::NoSeat { total: 1, .. }))
        ),
        "{:?}",
        out[6]
    );
    assert!(
        matches!(
            &out[5],
            Err(SeatFailure::Refused(SeatError::UnknownFeature(_)))
        ),
        "{:?}",
        out[5]
    );
    assert_eq!(usage(st, "cad").await, (3, 3, 0));
    assert_eq!(usage(st, "cam").await, (1, 1, 0));
    let listed = st.leases().await.unwrap();
    for (i, holder) in [(0, "h1"), (1, "h1"), (3, "h2"), (2, "h2")] {
        let l = listed.iter().find(|l| l.lease == lease(i)).unwrap();
        assert_eq!(l.holder, holder);
        assert_eq!(l.expires_at, out[i].as_ref().unwrap().expires_at);
    }
    // Batch-granted leases renew; a refused request id was given back.
    let r = renew(st, "h2", &[lease(3), lease(2)], TTL).await;
    assert!(r.iter().all(|r| r.is_some()), "{r:?}");

    // A retried request id replays inside a batch; the rest still batch.
    let again = st
        .grant_batch(&[req("cad", "h1", "b1", TTL), req("cad", "h1", "b4", TTL)])
        .await;
    let first = again[0].as_ref().unwrap();
    assert!(first.replayed && first.lease == lease(0), "{first:?}");
    assert!(
        matches!(
            &again[1],
            Err(SeatFailure::Refused(SeatError::NoSeat { .. }))
        ),
        "{:?}",
        again[1]
    );

    // Releases: all live in one go; then one already released among them.
    let rel = st
        .release_batch(&[("h1".into(), lease(0)), ("h2".into(), lease(3))])
        .await;
    assert!(rel.iter().all(|r| matches!(r, Ok(Some(_)))), "{rel:?}");
    assert_eq!(usage(st, "cad").await, (3, 1, 2));
    let rel = st
        .release_batch(&[("h1".into(), lease(0)), ("h1".into(), lease(1))])
        .await;
    assert!(
        matches!((&rel[0], &rel[1]), (Ok(None), Ok(Some(_)))),
        "{rel:?}"
    );
    // Someone else's lease is not released by a batch either.
    let rel = st
        .release_batch(&[("h1".into(), lease(2)), ("h1".into(), lease(2))])
        .await;
    assert!(rel.iter().all(|r| matches!(r, Ok(None))), "{rel:?}");
    assert_eq!(usage(st, "cam").await, (1, 1, 0));

    // The same request twice in one batch: one seat, the same lease twice.
    let twice = st
        .grant_batch(&[req("cad", "h3", "t1", TTL), req("cad", "h3", "t1", TTL)])
        .await;
    let (a, b) = (twice[0].as_ref().unwrap(), twice[1].as_ref().unwrap());
    assert_eq!(a.lease, b.lease);
    assert!(b.replayed);
    assert_eq!(usage(st, "cad").await, (3, 1, 2));
}

/// After a shrink below the seats held, batched grants give no seat until
/// the live count is below the new number (the retiring swap, one at a time).
async fn batch_grants_respect_a_shrink(kind: Kind) {
    let (s, v) = store_with(kind, "cad", 3).await;
    let ring = test_keyring();
    let st = s.storage.as_ref();
    let reqs: Vec<_> = (0..3)
        .map(|i| req("cad", "h", &format!("g{i}"), TTL))
        .collect();
    let held: Vec<_> = st
        .grant_batch(&reqs)
        .await
        .into_iter()
        .map(|g| g.unwrap().lease)
        .collect();
    st.apply_license(&record(&def("L1", 2, "cad", 1), &v, &ring))
        .await
        .unwrap();
    for (n, l) in held.iter().enumerate() {
        assert!(st.release("h", *l).await.unwrap().is_some());
        let batch: Vec<_> = (0..2)
            .map(|i| req("cad", "h", &format!("n{n}-{i}"), TTL))
            .collect();
        let out = st.grant_batch(&batch).await;
        let granted = out.iter().filter(|r| r.is_ok()).count();
        // Live after the release: 2, 1, 0; one seat licensed.
        let expect = if n == 2 { 1 } else { 0 };
        assert_eq!(granted, expect, "after release {n}: {out:?}");
    }
    assert_eq!(usage(st, "cad").await, (1, 1, 0));
}

async fn leases_list_and_force_release(kind: Kind) {
    let (s, _) = store_with(kind, "cad", 2).await;
    let st = s.storage.as_ref();
    let g = st.grant(&req("cad", "holder-1", "a", TTL)).await.unwrap();
    let l = st.leases().await.unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].lease, g.lease);
    assert_eq!(l[0].holder, "holder-1");
    assert_eq!(l[0].granted_by, "i-test");
    // The lease ends at once; the seat stays taken until every promise
    // already given (at most the lease's cap, TTL) has run out.
    let free_at = st.force_release(g.lease).await.unwrap().expect("was live");
    let now = st.now().await.unwrap();
    assert!(
        free_at > now + chrono::Duration::seconds(55),
        "{free_at} vs {now}"
    );
    assert!(
        free_at <= now + chrono::Duration::seconds(62),
        "{free_at} vs {now}"
    );
    assert_eq!(check(st, "holder-1", &[g.lease]).await, vec![Check::Lost]);
    assert!(renew(st, "holder-1", &[g.lease], TTL).await[0].is_none());
    assert!(st.release("holder-1", g.lease).await.unwrap().is_none());
    let l = st.leases().await.unwrap();
    assert_eq!(l.len(), 1);
    assert!(l[0].revoked && l[0].holder.is_empty());
    assert_eq!(usage(st, "cad").await, (2, 1, 1));
    assert!(st.force_release(g.lease).await.unwrap().is_none());
    // The other seat is still granted; the revoked one is not.
    st.grant(&req("cad", "holder-2", "b", TTL)).await.unwrap();
    assert!(matches!(
        st.grant(&req("cad", "holder-3", "c", TTL)).await,
        Err(SeatFailure::Refused(SeatError::NoSeat { .. }))
    ));
}

async fn identities_tokens_canaries_and_reseal(kind: Kind) {
    use floatlm::domain::seats::Role;
    use floatlm::storage::{IdentityRow, TokenRow};
    let s = TestStore::new(kind).await;
    let st = s.storage.as_ref();
    let now = st.now().await.unwrap();
    let row = IdentityRow {
        id: "0123456789abcdef".into(),
        name: "ci".into(),
        sealed: vec![1, 2, 3],
        created_at: now,
        expires_at: None,
        revoked_at: None,
    };
    st.insert_identity(&row).await.unwrap();
    assert!(
        st.insert_identity(&row).await.is_err(),
        "duplicate id refused"
    );
    let got = st.identity("0123456789abcdef").await.unwrap().unwrap();
    assert_eq!(got.sealed, vec![1, 2, 3]);
    assert!(st.revoke_identity("0123456789abcdef").await.unwrap());
    assert!(!st.revoke_identity("0123456789abcdef").await.unwrap());
    assert!(st
        .identity("0123456789abcdef")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());

    let t = |id: &str, hash: &str| TokenRow {
        id: id.into(),
        name: "t".into(),
        role: Role::Operator,
        token_hash: hash.into(),
        created_at: now,
        revoked_at: None,
    };
    assert!(st
        .insert_first_token(&t("a", &"a".repeat(64)))
        .await
        .unwrap());
    assert!(!st
        .insert_first_token(&t("b", &"b".repeat(64)))
        .await
        .unwrap());
    st.insert_token(&t("c", &"c".repeat(64))).await.unwrap();
    assert_eq!(
        st.token_by_hash(&"c".repeat(64))
            .await
            .unwrap()
            .unwrap()
            .role,
        Role::Operator
    );
    assert!(st.revoke_token("c").await.unwrap());
    assert!(st.token_by_hash(&"c".repeat(64)).await.unwrap().is_none());
    assert_eq!(st.tokens().await.unwrap().len(), 2);

    assert!(st.insert_canary("k1", b"one").await.unwrap());
    assert!(
        !st.insert_canary("k1", b"two").await.unwrap(),
        "first canary wins"
    );
    st.insert_canary("k2", b"x").await.unwrap();
    st.retain_canary("k2").await.unwrap();
    assert_eq!(
        st.canaries().await.unwrap(),
        vec![("k2".to_string(), b"x".to_vec())]
    );
    // A damaged canary is rewritten like any sealed blob: only if unchanged.
    assert!(st
        .reseal(SealedColumn::Canary, "k2", b"x", b"y")
        .await
        .unwrap());
    assert!(!st
        .reseal(SealedColumn::Canary, "k2", b"x", b"z")
        .await
        .unwrap());
    assert_eq!(
        st.canaries().await.unwrap(),
        vec![("k2".to_string(), b"y".to_vec())]
    );

    assert!(st
        .reseal(SealedColumn::Identity, "0123456789abcdef", &[1, 2, 3], &[4])
        .await
        .unwrap());
    assert!(
        !st.reseal(SealedColumn::Identity, "0123456789abcdef", &[1, 2, 3], &[5])
            .await
            .unwrap(),
        "conditional on the old blob"
    );
    assert_eq!(st.sealed_rows().await.unwrap().len(), 1);
    assert_eq!(
        st.purge_requests(Duration::from_secs(3600)).await.unwrap(),
        0
    );
}

async fn migrations_are_idempotent(kind: Kind) {
    let s = TestStore::new(kind).await;
    s.storage.migrate().await.unwrap();
    s.storage.ping().await.unwrap();
    let a = s.storage.now().await.unwrap();
    let b = s.storage.now().await.unwrap();
    assert!(b >= a, "the database clock does not run backwards");
}

async fn instances_register_drain_and_remove(kind: Kind) {
    let s = TestStore::new(kind).await;
    let st = s.storage.as_ref();
    assert!(!st
        .instance_heartbeat(&beat("i-a", "127.0.0.1:1", "127.0.0.1:2", true))
        .await
        .unwrap());
    assert!(!st
        .instance_heartbeat(&beat("i-b", "127.0.0.1:3", "127.0.0.1:4", true))
        .await
        .unwrap());
    let all = st.instances().await.unwrap();
    assert_eq!(
        all.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["i-a", "i-b"]
    );
    assert!(all[0].silent_for_s < 60.0 && all[0].address == "127.0.0.1:1");
    assert!(st.request_drain("i-b").await.unwrap());
    assert!(!st.request_drain("i-zz").await.unwrap());
    assert!(
        st.instance_heartbeat(&beat("i-b", "127.0.0.1:3", "127.0.0.1:4", false))
            .await
            .unwrap(),
        "drain is reported"
    );
    assert!(
        !st.instance_heartbeat(&beat("i-b", "127.0.0.1:3", "127.0.0.1:4", true))
            .await
            .unwrap(),
        "a restart clears it"
    );
    assert!(
        !st.remove_instance("i-a", Duration::from_secs(60))
            .await
            .unwrap(),
        "a live instance stays"
    );
    assert!(st.remove_instance("i-a", Duration::ZERO).await.unwrap());
    assert_eq!(st.instances().await.unwrap().len(), 1);
}

async fn ticket_keys_insert_once_list_and_purge(kind: Kind) {
    let t = TestStore::new(kind).await;
    let s = &t.storage;
    assert!(s.ticket_keys().await.unwrap().is_empty());
    assert!(s.insert_ticket_key(3600, b"first").await.unwrap());
    assert!(
        !s.insert_ticket_key(3600, b"second").await.unwrap(),
        "the first instance to create a period's key wins"
    );
    assert!(s.insert_ticket_key(7200, b"next").await.unwrap());
    assert_eq!(
        s.ticket_keys().await.unwrap(),
        vec![(3600, b"first".to_vec()), (7200, b"next".to_vec())]
    );
    let rows = s.sealed_rows().await.unwrap();
    assert_eq!(
        rows.iter()
            .filter(|r| r.column == SealedColumn::TicketKey)
            .count(),
        2
    );
    assert!(s
        .reseal(SealedColumn::TicketKey, "3600", b"first", b"again")
        .await
        .unwrap());
    assert_eq!(s.purge_ticket_keys(7200).await.unwrap(), 1);
    assert_eq!(
        s.ticket_keys().await.unwrap(),
        vec![(7200, b"next".to_vec())]
    );
}

testkit::both_backends!(
    ticket_keys_insert_once_list_and_purge,
    instances_register_drain_and_remove,
    grants_up_to_n_then_refuses,
    request_ids_make_grants_idempotent,
    renew_extends_and_expiry_frees,
    batch_renew_reports_each_lease,
    unknown_expired_and_future_features,
    apply_is_versioned,
    shrinking_never_revokes_and_converges,
    leases_list_and_force_release,
    batch_grant_and_release,
    batch_grants_respect_a_shrink,
    identities_tokens_canaries_and_reseal,
    migrations_are_idempotent,
);
