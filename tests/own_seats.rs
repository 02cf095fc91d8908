//! End users' own seats (issue 16): `mine` lists the leases of a session's
//! identity, `release` ends one of them from any session of that identity,
//! through the protocol, the client library and the CLI, on both backends.
//! And what an attacker tries against it: another identity's lease (neither
//! listed nor released, and answered as if unknown), a `logout` with what
//! `mine` shows, resent releases, a release racing the holder's heartbeats
//! on another instance, and a release of a lease id that was re-granted;
//! the racing ones run under the promise checker.

use floatlm::app::App;
use floatlm::domain::license::VendorSigningKey;
use floatlm::domain::seats::{GrantRequest, LeaseRef, Renewal, RequestId, SeatError};
use floatlm_client::{AuthInfo, Client, ClientError, HandleState, Options, SeatRelease};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::promise::{InstanceSpec, PromiseCluster, Recorder};
use testkit::{bin, def, layers, wait_for, Kind, TestDb, MASTER_KEY_1};

/// An in-process server: license `cad` of `seats` seats, identities alice
/// and bob, lease TTL 5 s.
struct Setup {
    app: Arc<App>,
    /// Identity ids.
    alice_id: String,
    bob_id: String,
    /// Identity strings `ID:SECRET@ADDR`.
    alice: String,
    bob: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
    _db: Option<TestDb>,
}

async fn setup(kind: Kind, seats: u32) -> Setup {
    let db = TestDb::for_kind(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let vendor = VendorSigningKey::generate();
    let url = db.as_ref().map(|d| d.url.clone());
    let mut l = layers(dir.path(), url.as_deref(), MASTER_KEY_1, &vendor);
    l.flag("lease_ttl", Some("5s"));
    let app = App::start(l.build().unwrap()).await.unwrap();
    let text = vendor.sign(&def("L1", 1, "cad", seats)).unwrap();
    app.licenses().apply_license(&text).await.unwrap();
    let (_, alice) = app.access().create_identity("alice", None).await.unwrap();
    let (_, bob) = app.access().create_identity("bob", None).await.unwrap();
    let (lic, _, stop) = testkit::serve_in_process(app.clone()).await;
    Setup {
        app,
        alice: format!("{}:{}@{lic}", alice.id, alice.secret.expose()),
        bob: format!("{}:{}@{lic}", bob.id, bob.secret.expose()),
        alice_id: alice.id,
        bob_id: bob.id,
        _stop: stop,
        _dir: dir,
        _db: db,
    }
}

fn opts(user: &str, host: &str) -> Options {
    Options {
        retry_interval: Duration::from_millis(500),
        request_timeout: Duration::from_secs(3),
        auth: AuthInfo {
            user: user.into(),
            host: host.into(),
            ..AuthInfo::default()
        },
        ..Options::default()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The first three parts of a lease id or seat reference (feature, slot, gen).
fn slot_and_gen(lease: &str) -> String {
    lease.split('.').take(3).collect::<Vec<_>>().join(".")
}

/// Two sessions of one identity: the second lists the first's lease and
/// releases it; the first learns on its next heartbeat; the seat is free for
/// others only once the first's promise has run out. Another identity sees
/// none of it and cannot release it.
async fn own_lease_is_listed_and_released_from_another_session(kind: Kind) {
    let s = setup(kind, 2).await;
    let workstation = Client::connect(&[&s.alice], opts("ann", "ws1"))
        .await
        .unwrap();
    let seat = workstation.checkout("cad").await.unwrap();
    let laptop = Client::connect(&[&s.alice], opts("ann", "laptop"))
        .await
        .unwrap();
    let bob = Client::connect(&[&s.bob], opts("bo", "ws9")).await.unwrap();
    let bobs_seat = bob.checkout("cad").await.unwrap();

    let mine = laptop.mine().await.unwrap();
    assert_eq!(mine.more, 0);
    let mine = mine.leases;
    assert_eq!(mine.len(), 1, "{mine:?}");
    let m = &mine[0];
    assert_eq!(
        (m.feature.as_str(), m.user.as_str(), m.host.as_str()),
        ("cad", "ann", "ws1")
    );
    let t = now_ms();
    assert!(m.since_ms <= t + 1000 && m.since_ms > t - 60_000, "{m:?}");
    assert!(
        m.promise_end_ms > t && m.promise_end_ms < t + 60_000,
        "{m:?}"
    );
    // Listed by its seat reference, never its lease id: same slot and
    // generation, another last part.
    assert_ne!(m.lease, seat.lease());
    assert_eq!(slot_and_gen(&m.lease), slot_and_gen(&seat.lease()));

    // Bob sees only his own seat, and cannot release alice's by either name:
    // the answer is the one for a lease that does not exist.
    let bobs = bob.mine().await.unwrap().leases;
    assert_eq!(bobs.len(), 1);
    assert_eq!(
        slot_and_gen(&bobs[0].lease),
        slot_and_gen(&bobs_seat.lease())
    );
    assert_eq!(bobs[0].user, "bo");
    for name in [m.lease.clone(), seat.lease()] {
        assert_eq!(
            bob.release_lease(&name).await.unwrap(),
            SeatRelease::NotLive
        );
    }
    let made_up = "1.0.999.00000000000000ab";
    assert_eq!(
        bob.release_lease(made_up).await.unwrap(),
        SeatRelease::NotLive
    );
    assert_eq!(laptop.mine().await.unwrap().leases.len(), 1);
    assert_eq!(seat.state(), HandleState::Held);

    // A release by a name that is no lease id at all is a clear error.
    match laptop.release_lease("not-a-lease").await {
        Err(ClientError::Server { message, .. }) => {
            assert!(message.contains("FEATURE.SLOT.GEN.NONCE"), "{message}")
        }
        other => panic!("a malformed lease must be refused: {other:?}"),
    }

    // The laptop releases the workstation's seat.
    let before = now_ms();
    let free_at = match laptop.release_lease(&m.lease).await.unwrap() {
        SeatRelease::Released { free_at: Some(at) } => at,
        other => panic!("alice's own lease must be released: {other:?}"),
    };
    let free_ms = free_at.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    // The seat waits out the promise already given (5 s TTL, margin).
    assert!(
        free_ms > before && free_ms < before + 10_000,
        "free at {free_ms}, released at {before}"
    );
    // Resent: not live any more.
    assert_eq!(
        laptop.release_lease(&m.lease).await.unwrap(),
        SeatRelease::NotLive
    );
    assert!(laptop.mine().await.unwrap().leases.is_empty());
    // Bob's seat is untouched.
    assert_eq!(bob.mine().await.unwrap().leases.len(), 1);

    // The workstation's handle learns it lost the seat on its next heartbeat
    // (a third of the 5 s promise).
    let lost = tokio::time::timeout(Duration::from_secs(5), seat.lost())
        .await
        .expect("the released seat's handle must learn it is lost within a heartbeat");
    assert!(matches!(seat.state(), HandleState::Lost { .. }), "{lost:?}");

    // Never more than 2: the released seat is not granted before free_at.
    let third = Client::connect(&[&s.alice], opts("ann", "ws2"))
        .await
        .unwrap();
    if now_ms() + 500 < free_ms {
        match third.checkout("cad").await {
            Err(ClientError::NoLicense { .. }) => {}
            Err(e) => panic!("the seat must stay taken until the promise ran out: {e}"),
            Ok(g) => panic!("granted {} before the promise ran out", g.lease()),
        }
    }
    let again = wait_for(
        "the released seat to be free",
        Duration::from_secs(15),
        || {
            let third = third.clone();
            async move { third.checkout("cad").await.ok() }
        },
    )
    .await;
    assert!(
        now_ms() + 50 >= free_ms,
        "granted at {} before the seat was free at {free_ms}",
        now_ms()
    );
    assert_eq!(again.state(), HandleState::Held);
    assert!(s
        .app
        .seats()
        .mine(&s.alice_id)
        .await
        .unwrap()
        .iter()
        .all(|l| l.holder == s.alice_id),);
    assert!(s.app.seats().mine(&s.bob_id).await.unwrap().len() == 1);
}

fn grant_req(holder: &str, rid: &str) -> GrantRequest {
    GrantRequest {
        feature: "cad".into(),
        request_id: RequestId::new(rid).unwrap(),
        holder: holder.into(),
        client_info: "ann@ws1 (inst-1)".into(),
        hold: Duration::from_secs(10),
        promise: Duration::from_secs(5),
        instance_id: "i".into(),
    }
}

/// The release matches the full lease id and the identity: a lease id whose
/// slot was re-granted (to the same identity, even), another identity's
/// lease, and a `logout` with the seat reference `mine` shows all leave the
/// live lease alone.
async fn a_release_matches_the_full_lease_and_its_identity(kind: Kind) {
    let s = setup(kind, 1).await;
    let app = &s.app;
    let (alice, bob) = (s.alice_id.as_str(), s.bob_id.as_str());
    let first = app
        .seats()
        .grant(&grant_req(alice, "a:1"))
        .await
        .unwrap()
        .lease;
    assert!(app.seats().release(alice, first).await.unwrap());
    let second = app
        .seats()
        .grant(&grant_req(alice, "a:2"))
        .await
        .unwrap()
        .lease;
    assert_eq!(
        (first.feature_id, first.slot_no),
        (second.feature_id, second.slot_no)
    );
    assert_ne!(first, second);
    // The old lease id and its seat reference name nothing live any more.
    assert_eq!(app.seats().release_mine(alice, first).await.unwrap(), None);
    assert_eq!(
        app.seats()
            .release_mine(alice, first.seat_ref())
            .await
            .unwrap(),
        None
    );
    // The same slot and generation with a forged last part: nothing.
    let forged = LeaseRef {
        nonce: second.nonce ^ 1,
        ..second
    };
    assert_eq!(app.seats().release_mine(alice, forged).await.unwrap(), None);
    // Another identity: nothing, by either name.
    assert_eq!(app.seats().release_mine(bob, second).await.unwrap(), None);
    assert_eq!(
        app.seats()
            .release_mine(bob, second.seat_ref())
            .await
            .unwrap(),
        None
    );
    assert!(app.seats().mine(bob).await.unwrap().is_empty());
    // `mine` shows the seat reference; a logout by it frees nothing (a
    // logout frees the slot at once, so it needs the lease id itself).
    let listed = app.seats().mine(alice).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].lease, second);
    assert!(!app.seats().release(alice, second.seat_ref()).await.unwrap());
    assert!(matches!(
        app.seats().renew(alice, &[second]).await.unwrap()[0],
        Renewal::Renewed(_)
    ));

    // By its seat reference: released; the holder is lost at once, the seat
    // stays taken until the promise ran out.
    let free_at = app
        .seats()
        .release_mine(alice, second.seat_ref())
        .await
        .unwrap()
        .expect("alice's live lease is released");
    assert_eq!(
        app.seats().renew(alice, &[second]).await.unwrap()[0],
        Renewal::Lost
    );
    match app.seats().grant(&grant_req(bob, "b:1")).await {
        Err(floatlm::app::SeatFailure::Refused(SeatError::NoSeat { .. })) => {}
        Err(e) => panic!("the seat must stay taken until {free_at}: {e}"),
        Ok(g) => panic!("granted {} before {free_at}", g.lease),
    }
    // The holder's login resent (same request id, a failover): the lease
    // has ended, so it is `lease_ended`, never the seat again.
    match app.seats().grant(&grant_req(alice, "a:2")).await {
        Err(floatlm::app::SeatFailure::Refused(SeatError::LeaseEnded(_))) => {}
        Err(e) => panic!("a resent login of a released lease must be lease_ended: {e}"),
        Ok(g) => panic!("a resent login of a released lease got {}", g.lease),
    }
    // Resent, by either name, and a logout after it: nothing more happens.
    assert_eq!(app.seats().release_mine(alice, second).await.unwrap(), None);
    assert_eq!(
        app.seats()
            .release_mine(alice, second.seat_ref())
            .await
            .unwrap(),
        None
    );
    assert!(!app.seats().release(alice, second).await.unwrap());
    // Not a grant before free_at, whatever was resent meanwhile.
    let granted = wait_for(
        "the seat to be free again",
        Duration::from_secs(15),
        || async { app.seats().grant(&grant_req(bob, "b:2")).await.ok() },
    )
    .await;
    let now = app.storage().now().await.unwrap();
    assert!(
        now >= free_at,
        "granted {} at {now}, before {free_at}",
        granted.lease
    );
}

/// An identity holding more leases than one answer can list, each with the
/// longest client info a login can record: `mine` answers with what fits one
/// envelope and counts the rest, instead of an answer no client can open.
async fn mine_fits_one_envelope_whatever_the_identity_holds(kind: Kind) {
    let s = setup(kind, 150).await;
    let long: String = format!("{}@{} (x)", "😀".repeat(200), "h".repeat(60))
        .chars()
        .take(255)
        .collect();
    for i in 0..150 {
        let req = GrantRequest {
            client_info: long.clone(),
            ..grant_req(&s.alice_id, &format!("many:{i}"))
        };
        s.app.seats().grant(&req).await.unwrap();
    }
    let laptop = Client::connect(&[&s.alice], opts("ann", "laptop"))
        .await
        .unwrap();
    let mine = laptop.mine().await.unwrap();
    assert!(
        mine.more > 0,
        "{} listed, {} more",
        mine.leases.len(),
        mine.more
    );
    assert!(mine.leases.len() > 20, "{} listed", mine.leases.len());
    assert_eq!(mine.leases.len() as u64 + mine.more, 150);
    assert!(mine.leases.iter().all(|l| l.user.starts_with('😀')));
    // Each listed one can be released.
    let first = mine.leases[0].lease.clone();
    assert!(matches!(
        laptop.release_lease(&first).await.unwrap(),
        SeatRelease::Released { .. }
    ));
    let (code, out, err) = cli(&["seats", "-s", &s.alice]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("more seats than one answer holds"), "{out}");
}

/// Runs the CLI, returns (exit code, stdout, stderr).
async fn cli(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `floatlm seats` and `floatlm release` as a user types them.
async fn the_cli_lists_and_releases_own_seats(kind: Kind) {
    let s = setup(kind, 2).await;
    let (code, out, _) = cli(&["seats", "-s", &s.alice]).await;
    assert_eq!(code, 0);
    assert!(out.contains("holds no seat"), "{out}");
    let workstation = Client::connect(&[&s.alice], opts("ann", "ws1"))
        .await
        .unwrap();
    let seat = workstation.checkout("cad").await.unwrap();
    let bob = Client::connect(&[&s.bob], opts("bo", "ws9")).await.unwrap();
    let _bobs = bob.checkout("cad").await.unwrap();

    let (code, out, err) = cli(&["seats", "-s", &s.alice]).await;
    assert_eq!(code, 0, "{err}");
    let header = out.lines().next().unwrap();
    for col in ["LEASE", "FEATURE", "USER", "HOST", "SINCE", "PROMISE END"] {
        assert!(header.contains(col), "{out}");
    }
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "only alice's seat: {out}");
    assert!(rows[0].contains("cad") && rows[0].contains("ann") && rows[0].contains("ws1"));
    assert!(!out.contains("ws9"), "{out}");
    let reference = rows[0].split_whitespace().next().unwrap().to_string();
    assert_eq!(slot_and_gen(&reference), slot_and_gen(&seat.lease()));
    let (code, json, _) = cli(&["seats", "-s", &s.alice, "--json"]).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["leases"][0]["lease"], reference.as_str());
    assert_eq!(v["more"], 0);

    // Bob cannot release it; the message does not say whether it exists.
    let (code, _, err) = cli(&["release", "-s", &s.bob, &reference]).await;
    assert_eq!(code, 1);
    assert!(err.contains("holds no such seat"), "{err}");
    assert_eq!(seat.state(), HandleState::Held);
    // Not a lease at all: a usage error.
    let (code, _, err) = cli(&["release", "-s", &s.alice, "ws1"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("LEASE column of `floatlm seats`"), "{err}");

    let (code, out, err) = cli(&["release", "-s", &s.alice, &reference]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("released") && out.contains("free for others by"),
        "{out}"
    );
    let (code, _, err) = cli(&["release", "-s", &s.alice, &reference]).await;
    assert_eq!(code, 1);
    assert!(err.contains("holds no such seat"), "{err}");
    tokio::time::timeout(Duration::from_secs(5), seat.lost())
        .await
        .expect("the handle learns of the release on its next heartbeat");
}

testkit::both_backends!(
    own_lease_is_listed_and_released_from_another_session,
    a_release_matches_the_full_lease_and_its_identity,
    the_cli_lists_and_releases_own_seats,
    mine_fits_one_envelope_whatever_the_identity_holds,
);

/// Two instances on one MariaDB: a holder heartbeats its lease through one
/// instance while another session of its identity releases it through both
/// at the same moment (a resend racing the first), and another identity
/// tries to log in the whole time. Exactly one release succeeds, the holder
/// is told it lost the seat, a release of the old lease id after the seat
/// was re-granted does nothing, and the promise checker finds no instant
/// with more promises than seats.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_racing_heartbeats_on_another_instance_keeps_the_promise() {
    let cluster = PromiseCluster::start(
        &[
            InstanceSpec::new("m1", "5s", "10s"),
            InstanceSpec::new("m2", "5s", "10s"),
        ],
        &[("cad", 1)],
        2,
    )
    .await;
    let rec = Recorder::new();
    let (a, b) = (&cluster.targets[0], &cluster.targets[1]);
    let user = cluster.client(&rec, "user", 0);
    let other = cluster.client(&rec, "other", 1);
    let mut old_refs: Vec<String> = Vec::new();
    for round in 0..3 {
        // The holder logs in (the seat may still wait out an earlier promise).
        let h = cluster.client(&rec, &format!("holder{round}"), 0);
        let lease = wait_for("the holder's login", Duration::from_secs(20), || async {
            h.login(a, "cad").await.granted().map(String::from)
        })
        .await;
        // The other identity cannot see or release it.
        assert!(other.mine(b).await.mine().is_empty());
        assert_eq!(other.release(a, &lease).await.seat_released(), Some(false));
        let listed = user.mine(b).await.mine();
        assert_eq!(listed.len(), 1, "round {round}");
        let reference = listed[0].clone();
        // Any old lease id of this slot, re-granted since: nothing.
        for old in &old_refs {
            assert_eq!(
                user.release(a, old).await.seat_released(),
                Some(false),
                "round {round}: old {old}"
            );
        }
        assert_eq!(
            h.heartbeat(b, std::slice::from_ref(&lease))
                .await
                .alive(&lease),
            Some(true)
        );
        // Heartbeats through b racing the release through a and its resend
        // through b; the other identity keeps trying to log in.
        let leases = [lease.clone()];
        let (hb1, r1, r2, hb2) = tokio::join!(
            h.heartbeat(b, &leases),
            user.release(a, &reference),
            user.release(b, &reference),
            h.heartbeat(a, &leases),
        );
        let released: Vec<Option<bool>> = vec![r1.seat_released(), r2.seat_released()];
        assert_eq!(
            released.iter().filter(|r| **r == Some(true)).count(),
            1,
            "round {round}: exactly one release succeeds: {r1:?} {r2:?} ({hb1:?} {hb2:?})"
        );
        // From now on the holder is told the seat is lost, on both instances.
        for at in [a, b] {
            assert_eq!(
                h.heartbeat(at, std::slice::from_ref(&lease))
                    .await
                    .alive(&lease),
                Some(false)
            );
        }
        // The other identity gets the seat once the holder's promise ran out
        // (the checker judges whether that was soon enough).
        let deadline = Instant::now() + Duration::from_secs(20);
        let got = loop {
            assert!(
                Instant::now() < deadline,
                "round {round}: the seat never came free: {}",
                cluster.logs()
            );
            let at = if rec.records().len() % 2 == 0 { a } else { b };
            if let Some(l) = other.login(at, "cad").await.granted() {
                break l.to_string();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // Releasing the holder's old lease now (re-granted to another
        // identity) does nothing, by either name.
        assert_eq!(
            user.release(b, &reference).await.seat_released(),
            Some(false)
        );
        assert_eq!(user.release(b, &lease).await.seat_released(), Some(false));
        assert_eq!(
            other
                .heartbeat(a, std::slice::from_ref(&got))
                .await
                .alive(&got),
            Some(true)
        );
        old_refs.push(reference);
        old_refs.push(lease);
        assert_eq!(other.logout(b, &got).await.released(), Some(true));
    }
    rec.dump_if_asked();
    let seats = cluster.seats.clone();
    if let Err(e) = rec.check(&seats) {
        panic!("{e}\n{}", cluster.logs());
    }
}
