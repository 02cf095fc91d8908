//! Seat stress on both backends: 64 concurrent tasks fight over N = 5 seats
//! with grants, request-id retries, renewals, releases and abandoned leases.
//! An auditor rebuilds every lease's lifetime from database timestamps and
//! proves that at no moment more than N were valid and that lease_gen only
//! rises; a poller checks the live table while the storm runs.

use chrono::{DateTime, Utc};
use floatlm::domain::license::VendorSigningKey;
use floatlm::domain::seats::{GrantRequest, LeaseRef, RequestId, SeatError};
use floatlm::storage::SeatFailure;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::{def, record, test_keyring, Kind, TestStore};

const SEATS: u32 = 5;
const TASKS: usize = 64;
/// Shared budget of grants, renewals and releases (refusals come on top):
/// tasks stop once this many reached a seat row.
const TOTAL_OPS: usize = 10_240;
const TIME_LIMIT: Duration = Duration::from_secs(240);

#[derive(Debug, Clone)]
struct Life {
    lease: LeaseRef,
    granted_at: DateTime<Utc>,
    /// When it stopped being valid: release time, or its last known expiry.
    end: DateTime<Utc>,
}

async fn seat_stress(kind: Kind) {
    let store = TestStore::with_pool(kind, 24).await;
    let st = store.storage.clone();
    let v = VendorSigningKey::generate();
    st.apply_license(&record(
        &def("STRESS", 1, "seat", SEATS),
        &v,
        &test_keyring(),
    ))
    .await
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicUsize::new(0));
    let poll_st = st.clone();
    let poll_stop = stop.clone();
    let poller = tokio::spawn(async move {
        let mut seen: HashMap<(i64, i64), i64> = HashMap::new();
        let mut polls = 0usize;
        while !poll_stop.load(Ordering::Relaxed) {
            let live = poll_st.leases().await.unwrap();
            assert!(
                live.len() <= SEATS as usize,
                "poller saw {} live leases of {SEATS}: {live:?}",
                live.len()
            );
            for l in live {
                let key = (l.lease.feature_id, l.lease.slot_no);
                let prev = seen.insert(key, l.lease.lease_gen).unwrap_or(0);
                assert!(
                    l.lease.lease_gen >= prev,
                    "lease_gen of slot {key:?} went back from {prev} to {}",
                    l.lease.lease_gen
                );
            }
            polls += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        polls
    });

    let seed: u64 = rand::random();
    eprintln!("seat stress on {kind:?}: seed {seed}");
    let started = Instant::now();
    // Half the tasks go through group commit (as the server's requests do),
    // so batched and single transactions race each other.
    let batches = Arc::new(floatlm::app::SeatBatchers::start(
        st.clone(),
        Arc::default(),
        Duration::from_millis(300),
        Duration::from_millis(300),
        Arc::default(),
    ));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let st = st.clone();
        let ops = ops.clone();
        let batches = (t % 2 == 1).then(|| batches.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let holder = format!("task{t}");
            let mut lives: Vec<Life> = Vec::new();
            let mut held: Option<Life> = None;
            let mut seq = 0u64;
            let (mut granted, mut refused, mut replays) = (0usize, 0usize, 0usize);
            while ops.load(Ordering::Relaxed) < TOTAL_OPS {
                if started.elapsed() > TIME_LIMIT {
                    panic!("stress exceeded its time limit of {TIME_LIMIT:?}");
                }
                match held.take() {
                    None => {
                        seq += 1;
                        let ttl = if rng.gen_bool(0.15) {
                            Duration::from_millis(100)
                        } else {
                            Duration::from_millis(300)
                        };
                        let req = GrantRequest {
                            feature: "seat".into(),
                            request_id: RequestId::new(format!("{holder}:{seq}")).unwrap(),
                            holder: holder.clone(),
                            client_info: String::new(),
                            hold: ttl,
                            promise: ttl,
                            instance_id: "stress".into(),
                        };
                        let res = match &batches {
                            Some(b) => b.grant(req.clone()).await,
                            None => st.grant(&req).await,
                        };
                        match res {
                            Ok(g) => {
                                granted += 1;
                                ops.fetch_add(1, Ordering::Relaxed);
                                if rng.gen_bool(0.1) {
                                    // A retry of the same request: same lease, no second
                                    // seat; or, if it already ran out, "lease ended".
                                    match st.grant(&req).await {
                                        Ok(again) => assert!(
                                            again.replayed && again.lease == g.lease,
                                            "{again:?} vs {g:?}"
                                        ),
                                        Err(SeatFailure::Refused(SeatError::LeaseEnded(l))) => {
                                            assert_eq!(l, g.lease)
                                        }
                                        Err(e) => panic!("retry failed: {e}"),
                                    }
                                    replays += 1;
                                }
                                held = Some(Life {
                                    lease: g.lease,
                                    granted_at: g.granted_at,
                                    end: g.expires_at,
                                });
                            }
                            Err(SeatFailure::Refused(SeatError::NoSeat { .. })) => {
                                // Like an application told "no license": back off a little.
                                refused += 1;
                                tokio::time::sleep(Duration::from_millis(rng.gen_range(50..150)))
                                    .await;
                            }
                            Err(e) => panic!("grant failed: {e}"),
                        }
                    }
                    Some(mut life) => {
                        let x: f64 = rng.gen();
                        if x < 0.5 {
                            ops.fetch_add(1, Ordering::Relaxed);
                            let hold = Duration::from_millis(300);
                            match st.extend(&holder, &[life.lease], hold, hold).await.unwrap()[0] {
                                // GREATEST: the expiry never goes down.
                                floatlm::storage::Extension::Extended(at) => {
                                    life.end =
                                        life.end.max(at + chrono::Duration::milliseconds(300));
                                    held = Some(life);
                                }
                                _ => lives.push(life),
                            }
                        } else if x < 0.99 {
                            ops.fetch_add(1, Ordering::Relaxed);
                            let ended = match &batches {
                                Some(b) => b.release(&holder, life.lease).await.unwrap(),
                                None => st.release(&holder, life.lease).await.unwrap(),
                            };
                            if let Some(at) = ended {
                                life.end = at;
                            }
                            lives.push(life);
                        } else {
                            // Abandoned: the client vanished; the lease runs out.
                            lives.push(life);
                        }
                    }
                }
            }
            if let Some(life) = held {
                lives.push(life);
            }
            (lives, granted, refused, replays)
        }));
    }
    let mut lives = Vec::new();
    let (mut granted, mut refused, mut replays) = (0, 0, 0);
    for t in tasks {
        let (l, g, r, p) = t.await.unwrap();
        lives.extend(l);
        granted += g;
        refused += r;
        replays += p;
    }
    stop.store(true, Ordering::Relaxed);
    let polls = poller.await.unwrap();
    let total_ops = ops.load(Ordering::Relaxed);
    eprintln!(
        "{kind:?}: {total_ops} grant/renew/release ops in {:?}: {granted} grants, {refused} refusals on top, {replays} retried request ids, {polls} polls",
        started.elapsed()
    );
    assert!(total_ops >= 10_000);
    assert!(
        granted > 1000 && refused > 500,
        "the storm must both grant and refuse: {granted} grants, {refused} refusals"
    );
    assert!(polls > 10);

    // lease_gen only rises per slot, and a slot's next lease starts after the
    // previous one ended.
    let mut by_slot: BTreeMap<(i64, i64), Vec<&Life>> = BTreeMap::new();
    for l in &lives {
        by_slot
            .entry((l.lease.feature_id, l.lease.slot_no))
            .or_default()
            .push(l);
    }
    assert!(
        by_slot.len() <= SEATS as usize,
        "leases on {} slots",
        by_slot.len()
    );
    for (slot, mut ls) in by_slot {
        ls.sort_by_key(|l| l.lease.lease_gen);
        for w in ls.windows(2) {
            assert!(
                w[1].lease.lease_gen > w[0].lease.lease_gen,
                "slot {slot:?}: duplicate lease {:?}",
                w[1].lease
            );
            assert!(
                w[1].granted_at >= w[0].granted_at,
                "slot {slot:?}: lease_gen rose but time went back"
            );
            assert!(
                w[1].granted_at >= w[0].end,
                "slot {slot:?}: lease {} granted at {} while lease {} was valid until {}",
                w[1].lease,
                w[1].granted_at,
                w[0].lease,
                w[0].end
            );
        }
    }
    // Sweep line over all lifetimes: never more than SEATS valid at once.
    let mut edges: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for l in &lives {
        edges.push((l.granted_at, 1));
        edges.push((l.end, -1));
    }
    edges.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut live, mut peak) = (0i32, 0i32);
    for (_, d) in edges {
        live += d;
        peak = peak.max(live);
    }
    assert!(
        peak <= SEATS as i32,
        "{peak} leases were valid at once; {SEATS} are licensed"
    );
    assert_eq!(
        peak, SEATS as i32,
        "the storm should have filled every seat at some point"
    );
}

testkit::both_backends!(seat_stress);
