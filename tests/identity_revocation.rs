//! Revoked and expired identities stop on every instance (issue 13): three
//! real `floatlm serve` processes on one MariaDB database, a session and a
//! lease of the identity on each, a second identity waiting for seats, and
//! the promise checker over everything the clients were told.

use floatlm_protocol::messages::{ErrorCode, Response};
use std::time::{Duration, Instant};
use testkit::promise::{Answer, Findings, InstanceSpec, PromiseCluster, RecClient, Record, Target};
use testkit::{admin_cli, created_credential};

/// The instances' `cluster_heartbeat`: the bound of a revocation's reach.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// What the bound may be late by on a busy two-core machine: the read of
/// the revision itself, the test's own polling and request latency.
const SLACK: Duration = Duration::from_millis(1000);
const INSTANCES: [InstanceSpec; 3] = [
    InstanceSpec::new("a", "5s", "10s"),
    InstanceSpec::new("b", "6s", "12s"),
    InstanceSpec::new("c", "5s", "15s"),
];
const FEATURE: &str = "cad";

async fn cluster(identities: usize, seats: u32) -> PromiseCluster {
    PromiseCluster::start_with(
        &INSTANCES,
        &[(FEATURE, seats)],
        identities,
        &[("FLOATLM_CLUSTER_HEARTBEAT", "1s")],
    )
    .await
}

fn sealed_error(r: &Record) -> Option<ErrorCode> {
    match &r.answer {
        Answer::Sealed(Response::Error { code, .. }) => Some(*code),
        _ => None,
    }
}

/// A lease of `FEATURE` for `c` on each instance, in order.
async fn one_lease_each(c: &RecClient, targets: &[Target], f: &mut Findings) -> Vec<String> {
    let mut leases = Vec::new();
    for at in targets {
        let r = c.login(at, FEATURE).await;
        match r.granted() {
            Some(l) => leases.push(l.to_string()),
            None => panic!("{} could not log in on {}: {}", c.name, at.name, r.answer),
        }
        f.expect(
            r.promises().iter().all(|(_, ttl)| *ttl > 0),
            format!("a grant with a promise: {}", r.answer),
        );
    }
    leases
}

/// Heartbeats `lease` through `at` every 50 ms until an answer is the sealed
/// `code`; returns that record and every record before it. Gives up after
/// `within`.
async fn until_refused(
    c: &RecClient,
    at: &Target,
    lease: &str,
    code: ErrorCode,
    within: Duration,
) -> (Option<Record>, Vec<Record>) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let r = c.heartbeat(at, &[lease.to_string()]).await;
        if sealed_error(&r) == Some(code) {
            return (Some(r), seen);
        }
        seen.push(r);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (None, seen)
}

/// After the sealed refusal: the session is gone (401 session_unknown), and
/// a new handshake is refused with the reason, sealed in the ServerHello.
async fn session_dropped_and_handshake_refused(
    c: &RecClient,
    at: &Target,
    lease: &str,
    why: &str,
    f: &mut Findings,
) {
    let r = c.heartbeat(at, &[lease.to_string()]).await;
    f.expect(
        matches!(&r.answer, Answer::Http(401, body) if body.contains("session_unknown")),
        format!("{}: the refused session is dropped: {}", at.name, r.answer),
    );
    let r = c.heartbeat(at, &[lease.to_string()]).await;
    f.expect(
        matches!(&r.answer, Answer::None(e) if e.contains("identity refused") && e.contains(why)),
        format!(
            "{}: a new handshake is refused ({why}): {}",
            at.name, r.answer
        ),
    );
}

/// Logs `c` in on every instance in turn until it holds `want` leases;
/// returns when it got the last one (None: not within `within`).
async fn fill_seats(
    c: &RecClient,
    targets: &[Target],
    want: usize,
    within: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + within;
    let mut held = 0;
    let mut i = 0;
    while Instant::now() < deadline {
        let r = c.login(&targets[i % targets.len()], FEATURE).await;
        i += 1;
        if r.granted().is_some() {
            held += 1;
            if held == want {
                return r.received;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    None
}

async fn session_counts(at: &Target) -> serde_json::Value {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://{}/admin/v1/status",
            at.admin.as_deref().unwrap()
        ))
        .bearer_auth(testkit::CLUSTER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["sessions"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_identity_stops_on_every_instance_within_one_cluster_heartbeat() {
    // Four seats: the victim holds three, one is free for a login in the
    // moment before an instance learns of the revocation.
    let cluster = cluster(2, 4).await;
    let rec = testkit::promise::Recorder::new();
    let t = &cluster.targets;
    let victim = cluster.client(&rec, "victim", 0);
    let other = cluster.client(&rec, "other", 1);
    let mut f = Findings::new();
    let leases = one_lease_each(&victim, t, &mut f).await;

    let victim_id = cluster.credentials[0]
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let out = admin_cli(&cluster.servers[0], &["identity", "revoke", &victim_id]);
    let revoked = Instant::now();
    f.expect(
        out.contains("3 lease(s) ended"),
        format!("the revocation ends the identity's three leases: {out}"),
    );
    // At once, on an instance that has probably not caught up yet: a grant
    // there is ended when it does (force release), one after is refused.
    let late = victim.login(&t[2], FEATURE).await;
    eprintln!("a login right after the revocation, on c: {}", late.answer);
    f.expect(
        late.granted().is_some() || sealed_error(&late) == Some(ErrorCode::IdentityRevoked),
        format!("granted before c knew, or refused: {}", late.answer),
    );

    // Every instance refuses the open session, sealed: the revoking one at
    // once, the others within one cluster heartbeat.
    let within = HEARTBEAT + SLACK;
    let ((ra, sa), (rb, sb), (rc, sc)) = tokio::join!(
        until_refused(
            &victim,
            &t[0],
            &leases[0],
            ErrorCode::IdentityRevoked,
            within * 5
        ),
        until_refused(
            &victim,
            &t[1],
            &leases[1],
            ErrorCode::IdentityRevoked,
            within * 5
        ),
        until_refused(
            &victim,
            &t[2],
            &leases[2],
            ErrorCode::IdentityRevoked,
            within * 5
        ),
    );
    for (i, (refusal, before)) in [(ra, sa), (rb, sb), (rc, sc)].into_iter().enumerate() {
        let name = &t[i].name;
        // The holder is told it lost the seat: nothing sent after the
        // revocation is answered alive.
        for r in &before {
            f.expect(
                r.sent < revoked || r.promises().is_empty(),
                format!(
                    "{name}: a heartbeat after the revocation answered alive: {}",
                    r.answer
                ),
            );
            f.expect(
                !matches!(r.answer, Answer::Http(..) | Answer::None(_)),
                format!(
                    "{name}: the session kept working until refused: {}",
                    r.answer
                ),
            );
        }
        let Some(refusal) = refusal else {
            f.expect(false, format!("{name} never answered identity_revoked"));
            continue;
        };
        let took = refusal.received.unwrap() - revoked;
        eprintln!("{name} refused the revoked identity {took:?} after the revocation");
        let bound = if i == 0 { SLACK } else { within };
        f.expect(
            took <= bound,
            format!("{name} refused the revoked identity only {took:?} after the revocation (bound {bound:?})"),
        );
        session_dropped_and_handshake_refused(&victim, &t[i], &leases[i], "revoked", &mut f).await;
        let counts = session_counts(&t[i]).await;
        f.expect(
            counts["identity_refused"].as_u64() >= Some(1),
            format!("{name} counts the ended session: {counts}"),
        );
    }

    // Its seats come back once the promises given for them have run out (at
    // most the largest TTL + 1 s after the revocation), never before: the
    // checker sees every login the other identity tries meanwhile.
    let filled = fill_seats(&other, t, 4, Duration::from_secs(30)).await;
    match filled {
        Some(at) => {
            // A lease c granted before it knew is force-released when it
            // learns: sooner than its own lease_hold (15 s) would end it.
            let after = at - revoked;
            eprintln!("the other identity holds every seat {after:?} after the revocation");
            f.expect(
                after <= Duration::from_secs(6 + 1) + Duration::from_secs(4),
                format!("the seats came back only {after:?} after the revocation"),
            );
        }
        None => f.expect(false, "the revoked identity's seats never came back"),
    }
    f.finish(&rec, &cluster.seats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_identity_stops_on_every_instance_at_its_expiry() {
    let cluster = cluster(1, 3).await;
    let rec = testkit::promise::Recorder::new();
    let t = &cluster.targets;
    let other = cluster.client(&rec, "other", 0);
    let mut f = Findings::new();

    let lifetime = Duration::from_secs(10);
    let out = admin_cli(
        &cluster.servers[0],
        &["identity", "create", "--name", "short", "--expires", "10s"],
    );
    let credential = created_credential(&out);
    // The expiry as stored, on this test's clock (one machine: the database
    // and the test read the same wall clock).
    let list: serde_json::Value = serde_json::from_str(&admin_cli(
        &cluster.servers[0],
        &["--json", "identity", "list"],
    ))
    .unwrap();
    let id = credential.split(':').next().unwrap();
    let stored = list["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .and_then(|i| i["expires_at"].as_str())
        .and_then(|e| e.parse::<chrono::DateTime<chrono::Utc>>().ok())
        .expect("the identity's expiry");
    let expiry = Instant::now() + (stored - chrono::Utc::now()).to_std().unwrap();
    let (earliest, latest) = (expiry, expiry);
    let victim = RecClient::new(&rec, "victim", &credential);
    let leases = one_lease_each(&victim, t, &mut f).await;

    let wait = lifetime + HEARTBEAT * 5;
    let ((ra, sa), (rb, sb), (rc, sc)) = tokio::join!(
        until_refused(&victim, &t[0], &leases[0], ErrorCode::IdentityExpired, wait),
        until_refused(&victim, &t[1], &leases[1], ErrorCode::IdentityExpired, wait),
        until_refused(&victim, &t[2], &leases[2], ErrorCode::IdentityExpired, wait),
    );
    // The instances' clocks are estimates of the database's: a little slack.
    let margin = Duration::from_millis(250);
    for (i, (refusal, before)) in [(ra, sa), (rb, sb), (rc, sc)].into_iter().enumerate() {
        let name = &t[i].name;
        for r in &before {
            // Served until the expiry, and never promised past it.
            f.expect(
                r.promises()
                    .iter()
                    .all(|(_, ttl)| r.sent + Duration::from_millis(*ttl) <= latest + margin),
                format!("{name}: a promise past the identity's expiry: {}", r.answer),
            );
            f.expect(
                r.sent < latest + margin || r.promises().is_empty(),
                format!("{name}: alive after the expiry: {}", r.answer),
            );
        }
        let Some(refusal) = refusal else {
            f.expect(false, format!("{name} never answered identity_expired"));
            continue;
        };
        let at = refusal.received.unwrap();
        f.expect(
            refusal.sent + margin >= earliest,
            format!("{name} refused the identity before its expiry"),
        );
        // Known in advance: refused from the expiry on, with no delay but
        // this test's own polling.
        f.expect(
            at <= latest + margin + Duration::from_millis(500),
            format!(
                "{name} refused the expired identity {:?} after its expiry",
                at.saturating_duration_since(latest)
            ),
        );
        session_dropped_and_handshake_refused(&victim, &t[i], &leases[i], "expired", &mut f).await;
    }

    // Nothing is force-released: the seats come back when the unrenewed
    // leases run out (within the largest lease_hold of their last renewal).
    let filled = fill_seats(&other, t, 3, Duration::from_secs(40)).await;
    match filled {
        Some(at) => {
            let after = at.saturating_duration_since(latest);
            eprintln!("the other identity holds every seat {after:?} after the expiry");
            f.expect(
                after <= Duration::from_secs(15 + 5),
                format!("the seats came back only {after:?} after the expiry"),
            );
        }
        None => f.expect(false, "the expired identity's seats never came back"),
    }
    f.finish(&rec, &cluster.seats);
}

/// The client library treats `identity_revoked` as final: a held seat is
/// reported lost at its next heartbeat (no failover, no waiting for the
/// promise to run out), and the next call says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_reports_a_revoked_identity_s_seat_lost_at_once() {
    use floatlm_client::{Client, ClientError, LossReason, Options};
    let dir = tempfile::tempdir().unwrap();
    let vendor = floatlm::domain::license::VendorSigningKey::generate();
    let mut l = testkit::layers(dir.path(), None, testkit::MASTER_KEY_1, &vendor);
    l.flag("lease_ttl", Some("5s"));
    let app = floatlm::app::App::start(l.build().unwrap()).await.unwrap();
    let lic = vendor.sign(&testkit::def("L", 1, FEATURE, 2)).unwrap();
    app.licenses().apply_license(&lic).await.unwrap();
    let (_, ident) = app.access().create_identity("ws", None).await.unwrap();
    let (addr, _, _stop) = testkit::serve_in_process(app.clone()).await;
    let client = Client::connect(
        &[format!("{}:{}@{addr}", ident.id, ident.secret.expose())],
        Options::default(),
    )
    .await
    .unwrap();
    let seat = client.checkout(FEATURE).await.unwrap();
    let report = app.access().revoke_identity(&ident.id).await.unwrap();
    assert_eq!(report.leases_ended, 1, "{report:?}");
    let revoked = Instant::now();
    let loss = tokio::time::timeout(Duration::from_secs(10), seat.lost())
        .await
        .expect("the seat is reported lost");
    match &loss {
        LossReason::IdentityRefused { reason } => assert!(reason.contains("revoked"), "{reason}"),
        other => panic!("expected an identity refusal, got {other:?}"),
    }
    // At its next heartbeat (a third of the 5 s TTL), well before the
    // promise (4.5 s) would have run out.
    assert!(
        revoked.elapsed() < Duration::from_secs(3),
        "{:?}",
        revoked.elapsed()
    );
    match client.query(&[]).await {
        Err(ClientError::IdentityRefused { reason, .. }) => {
            assert!(reason.contains("revoked"), "{reason}")
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
}
