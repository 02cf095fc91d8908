//! The one proxy in front of the cluster goes down, and comes back.
//!
//! Three `floatlm serve` instances share one MariaDB database behind a real
//! NGINX running the shipped `nginx/floatlm-hash.conf` (its timeouts and
//! passive checks unchanged). Clients of the Rust library, given only the
//! proxy's address and the library's default options (as an application in
//! the field), hold seats through it. NGINX is stopped as `nginx -s stop`
//! does (SIGTERM to its master, which stops its workers) and started again
//! on the same port with the same configuration. `lease_ttl` is 10 s
//! (`lease_hold` its default, twice that).
//!
//! * `an_outage_shorter_than_the_promise_costs_no_seat`: six holders,
//!   checked out a sixth of a heartbeat period apart so that their
//!   heartbeats fall due all through the outage; the proxy stays down 4 s.
//!   No holder loses its seat (no loss notification, every handle valid
//!   with its lease, the server lists the same leases); checkouts during the
//!   outage, by a connected client and by a new one, fail at once with "no
//!   license server reachable: …"; once the proxy is back, checkouts
//!   succeed and the holders whose heartbeats failed are confirmed again.
//! * `an_outage_longer_than_the_promise_is_reported_and_heals`: three
//!   holders; the proxy stays down until each has been told it lost its
//!   seat (`lost()`, `on_loss`: "no server confirmed the lease before its
//!   promise ran out"), which must happen when its promise ends, not
//!   before; once the proxy is back, each of those clients checks out again.
//!
//! The refusals' wording is checked last, after everything else: the
//! message must say no server is reachable, name the proxy and say the
//! connection was refused, and blame nothing else. (It fails today for a
//! client opening a new session, which is told "TLS certificate problem:
//! Connection refused": `describe` in crates/client/src/transport.rs takes
//! the word "handshake" in the request's URL, `/sentinel/ldk/v1/handshake`,
//! for a TLS handshake failure.)
//!
//! Each prints what it measured (how long failing checkouts took, the least
//! promise any holder had left during the outage, how long after the
//! proxy's return checkouts and renewals succeeded), for the "proxy down"
//! row of docs/operations.md's "What happens when…" table.

use floatlm_client::{Client, ClientError, HandleState, LossReason, Options, SeatHandle};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::nginx::{front, Nginx, ServerParams};
use testkit::{cli_license, cluster_instance, wait_for, ServerProc, TestDb, CLUSTER_TOKEN};

const FEATURE: &str = "cad";
const TTL: Duration = Duration::from_secs(10);

/// Three instances on one test database behind NGINX. Dropped in field
/// order: the proxy, the instances, then the database.
struct Cluster {
    nginx: Nginx,
    servers: Vec<ServerProc>,
    /// `ID:SECRET@PROXY`.
    ident: String,
    _dir: tempfile::TempDir,
    _db: TestDb,
}

async fn cluster(license_id: &str, seats: u32) -> Cluster {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pubkey, lic) = cli_license(d, license_id, FEATURE, seats);
    let ttl = format!("{}s", TTL.as_secs());
    let servers: Vec<ServerProc> = ["lic-1", "lic-2", "lic-3"]
        .iter()
        .map(|id| {
            cluster_instance(
                d,
                &db,
                id,
                "127.0.0.1:0",
                &["--vendor-key", &pubkey, "--lease-ttl", &ttl],
                &[],
            )
        })
        .collect();
    let (nginx, proxy, cred) = front(
        &servers,
        "floatlm-hash.conf",
        d,
        ServerParams::Shipped,
        &lic,
        "proxy-down",
    );
    Cluster {
        nginx,
        servers,
        ident: format!("{cred}@{proxy}"),
        _dir: dir,
        _db: db,
    }
}

impl Cluster {
    async fn client(&self) -> Client {
        Client::connect(&[&self.ident], Options::default())
            .await
            .unwrap_or_else(|e| panic!("a client through the proxy: {e}"))
    }

    /// The live leases the server lists (`GET /admin/v1/leases`, straight
    /// to an instance's admin listener, not through the proxy).
    async fn server_leases(&self) -> HashSet<String> {
        let url = format!("http://{}/admin/v1/leases", self.servers[0].admin);
        let r = reqwest::Client::new()
            .get(&url)
            .bearer_auth(CLUSTER_TOKEN)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(r.status().is_success(), "GET {url}: HTTP {}", r.status());
        let v: serde_json::Value = r.json().await.unwrap();
        v["leases"]
            .as_array()
            .unwrap_or_else(|| panic!("no leases in {v}"))
            .iter()
            .filter_map(|l| l["lease"].as_str().map(str::to_string))
            .collect()
    }
}

struct Holder {
    client: Client,
    seat: SeatHandle,
    lease: String,
    /// What its loss callback was told, and when.
    losses: Arc<Mutex<Vec<(Instant, String)>>>,
}

async fn holder(c: &Cluster) -> Holder {
    let client = c.client().await;
    let seat = client
        .checkout(FEATURE)
        .await
        .unwrap_or_else(|e| panic!("a checkout before the outage: {e}"));
    let losses = Arc::new(Mutex::new(Vec::new()));
    {
        let losses = losses.clone();
        seat.on_loss(move |why| {
            losses
                .lock()
                .unwrap()
                .push((Instant::now(), why.to_string()))
        });
    }
    Holder {
        lease: seat.lease(),
        client,
        seat,
        losses,
    }
}

/// A checkout while the proxy is down: must fail with the library's
/// "unreachable" error. Returns how long it took to fail, and the message
/// (checked by [`wording`] at the end of the test, after everything else).
async fn refused_checkout(
    what: &str,
    checkout: impl std::future::Future<Output = Result<SeatHandle, ClientError>>,
) -> (Duration, String) {
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), checkout)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 30 s while the proxy is down"));
    let took = t.elapsed();
    match r {
        Err(e @ ClientError::Unreachable(_)) => (took, e.to_string()),
        Err(e) => panic!("{what}: want Unreachable while the proxy is down, got {e:?} ({e})"),
        Ok(s) => panic!("{what}: granted {} while the proxy is down", s.lease()),
    }
}

/// What is wrong with the message of a checkout refused while the proxy is
/// down, if anything: it must say no server is reachable, name the proxy,
/// say the connection was refused, and not blame anything else (TLS: the
/// proxy is plain HTTP).
fn wording(what: &str, proxy: &str, m: &str) -> Option<String> {
    let ok = m.starts_with("no license server reachable: ")
        && m.contains(proxy)
        && m.contains("connection refused")
        && !m.contains("TLS");
    (!ok).then(|| format!("{what}: {m:?}"))
}

/// Samples every holder's promise every 20 ms until `stop`; returns the
/// least time any valid one had left, and any holder seen neither Held nor
/// Reconnecting.
fn sample_promises(
    holders: Arc<Vec<Holder>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Duration, Vec<String>)> {
    tokio::spawn(async move {
        let mut least = Duration::MAX;
        let mut bad = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            for (i, h) in holders.iter().enumerate() {
                match h.seat.state() {
                    HandleState::Held | HandleState::Reconnecting { .. } => {
                        least = least.min(h.seat.valid_until().saturating_duration_since(now));
                    }
                    other => bad.push(format!("holder {i}: {other:?}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (least, bad)
    })
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Waits until `t`, with a bound.
async fn until(what: &str, t: Instant) {
    wait_for(what, Duration::from_secs(60), || async {
        (Instant::now() >= t).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shorter_than_the_promise_costs_no_seat() {
    const HOLDERS: usize = 6;
    const OUTAGE: Duration = Duration::from_secs(4);
    let began = Instant::now();
    let mut c = cluster("PXA", 12).await;
    let proxy = c.nginx.addr().to_string();

    // Holders checked out a sixth of a heartbeat period (TTL / 3) apart:
    // whenever the proxy goes down, one of them is about to renew.
    let mut holders = Vec::new();
    for _ in 0..HOLDERS {
        holders.push(holder(&c).await);
        tokio::time::sleep(TTL / 3 / HOLDERS as u32).await;
    }
    // Every holder renewed once (steady state: promises from heartbeats).
    let first: Vec<Instant> = holders.iter().map(|h| h.seat.valid_until()).collect();
    wait_for("every holder to renew once", 3 * TTL, || {
        let done = holders
            .iter()
            .zip(&first)
            .all(|(h, v)| h.seat.valid_until() > *v);
        async move { done.then_some(()) }
    })
    .await;
    // A connected client that holds nothing, for checkouts during the outage.
    let probe = c.client().await;
    let before = c.server_leases().await;
    let ours: HashSet<String> = holders.iter().map(|h| h.lease.clone()).collect();
    assert_eq!(before, ours, "the server lists exactly the holders' leases");

    let holders = Arc::new(holders);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_promises(holders.clone(), stop.clone());

    // Down.
    let left_at_stop: Vec<Duration> = holders
        .iter()
        .map(|h| {
            h.seat
                .valid_until()
                .saturating_duration_since(Instant::now())
        })
        .collect();
    c.nginx.stop();
    let down = Instant::now();
    let (connected_took, connected_msg) =
        refused_checkout("a connected client's checkout", probe.checkout(FEATURE)).await;
    let (fresh_took, fresh_msg) = refused_checkout("a new client", async {
        Client::connect(&[&c.ident], Options::default())
            .await?
            .checkout(FEATURE)
            .await
    })
    .await;
    until("the outage's end", down + OUTAGE).await;
    // Whose heartbeat failed while it was down (they renew once it is back).
    let reconnecting: Vec<usize> = holders
        .iter()
        .enumerate()
        .filter(|(_, h)| matches!(h.seat.state(), HandleState::Reconnecting { .. }))
        .map(|(i, _)| i)
        .collect();

    // Back.
    c.nginx.start_again();
    let back = Instant::now();
    let outage = back - down;
    let seat = probe
        .checkout(FEATURE)
        .await
        .unwrap_or_else(|e| panic!("a checkout right after the proxy's return: {e}"));
    let connected_back = back.elapsed();
    let t = Instant::now();
    let fresh = c.client().await;
    let fresh_seat = fresh
        .checkout(FEATURE)
        .await
        .unwrap_or_else(|e| panic!("a new client's checkout after the proxy's return: {e}"));
    let fresh_back = t.elapsed();
    let renewed = wait_for("the holders whose heartbeats failed to renew", TTL, || {
        let done = reconnecting
            .iter()
            .all(|&i| holders[i].seat.state() == HandleState::Held);
        async move { done.then(|| back.elapsed()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (least, bad) = sampler.await.unwrap();

    eprintln!(
        "proxy down {:.2} s (lease_ttl {} s), {HOLDERS} holders; promise left at the stop: {:?} ms",
        outage.as_secs_f64(),
        TTL.as_secs(),
        left_at_stop.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    );
    eprintln!(
        "  checkouts while down failed after {} ms (connected client) and {} ms (new client): {connected_msg:?} / {fresh_msg:?}",
        ms(connected_took),
        ms(fresh_took)
    );
    eprintln!(
        "  least promise any holder had left: {} ms; holders whose heartbeat failed: {reconnecting:?}, all renewed {} ms after the proxy was back",
        ms(least),
        ms(renewed)
    );
    eprintln!(
        "  after the return: a connected client's checkout took {} ms, a new client's connect and checkout {} ms",
        ms(connected_back),
        ms(fresh_back)
    );

    // Nothing lost.
    let mut problems = bad;
    for (i, h) in holders.iter().enumerate() {
        let losses = h.losses.lock().unwrap().clone();
        if !losses.is_empty() {
            problems.push(format!("holder {i} was told it lost its seat: {losses:?}"));
        }
        if !h.seat.is_valid() || h.seat.lease() != h.lease {
            problems.push(format!(
                "holder {i}: {:?}, lease {} (was {})",
                h.seat.state(),
                h.seat.lease(),
                h.lease
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "a {outage:?} proxy outage with promises of {left_at_stop:?} left: {problems:#?}"
    );
    let after = c.server_leases().await;
    let new: HashSet<String> = [seat.lease(), fresh_seat.lease()].into();
    assert_eq!(
        after,
        &ours | &new,
        "the server lists the holders' leases (and the two new ones)"
    );
    assert!(
        connected_took < Duration::from_secs(2) && fresh_took < Duration::from_secs(2),
        "a refused connection fails at once: {connected_took:?}, {fresh_took:?}"
    );
    // The library retries a failed heartbeat every twelfth of the TTL.
    assert!(
        renewed <= TTL / 12 + Duration::from_secs(2),
        "renewed {renewed:?} after the proxy's return"
    );
    assert!(
        connected_back < Duration::from_secs(2) && fresh_back < Duration::from_secs(3),
        "checkouts after the return: {connected_back:?}, {fresh_back:?}"
    );

    for s in [seat, fresh_seat] {
        assert!(s.release().await);
    }
    let holders = Arc::try_unwrap(holders).unwrap_or_else(|_| panic!("the sampler ended"));
    for h in holders {
        assert!(h.seat.release().await, "release {}", h.lease);
    }
    eprintln!("  whole test {:.1} s", began.elapsed().as_secs_f64());
    let wrong: Vec<String> = [
        wording("a connected client's checkout", &proxy, &connected_msg),
        wording("a new client", &proxy, &fresh_msg),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        wrong.is_empty(),
        "checkouts while the proxy was down were refused with misleading messages: {wrong:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_promise_is_reported_and_heals() {
    const HOLDERS: usize = 3;
    let began = Instant::now();
    // Lost leases keep their seats until they run out on the server: room
    // for each client to check out again meanwhile.
    let mut c = cluster("PXB", 2 * HOLDERS as u32).await;
    let proxy = c.nginx.addr().to_string();
    let mut holders = Vec::new();
    for _ in 0..HOLDERS {
        holders.push(holder(&c).await);
    }
    let promised: Vec<Instant> = holders.iter().map(|h| h.seat.valid_until()).collect();

    c.nginx.stop();
    let down = Instant::now();
    // Each holder is told when its promise ends.
    let mut lost = Vec::new();
    for (i, h) in holders.iter().enumerate() {
        let reason = tokio::time::timeout(
            promised[i].saturating_duration_since(Instant::now()) + Duration::from_secs(2),
            h.seat.lost(),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "holder {i} not told of its loss within 2 s after its promise ended; {:?}",
                h.seat.state()
            )
        });
        // When the callback ran (before `lost()` woke).
        let at = h.losses.lock().unwrap().first().map(|(at, _)| *at);
        lost.push((
            at.expect("the loss callback ran before lost() resolved"),
            reason,
        ));
    }
    // Still down: try a checkout to be sure.
    let (refused_took, refused_msg) =
        refused_checkout("a checkout while down", holders[0].client.checkout(FEATURE)).await;
    c.nginx.start_again();
    let back = Instant::now();
    let outage = back - down;

    let mut problems = Vec::new();
    let mut lateness = Vec::new();
    for (i, (h, (at, reason))) in holders.iter().zip(&lost).enumerate() {
        // `lost()` resolves once the handle's task fired the loss; the
        // promise was kept until then.
        if *at < promised[i] {
            problems.push(format!(
                "holder {i} told of a loss {} ms before its promise ended",
                ms(promised[i] - *at)
            ));
        }
        lateness.push(at.saturating_duration_since(promised[i]));
        match reason {
            LossReason::Unconfirmed { last_error } => {
                if !last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("no license server reachable"))
                {
                    problems.push(format!("holder {i}: last error {last_error:?}"));
                }
            }
            other => problems.push(format!("holder {i}: lost for {other:?}")),
        }
        let told: Vec<String> = h
            .losses
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect();
        if told.len() != 1
            || !told[0].contains("no server confirmed the lease before its promise ran out")
        {
            problems.push(format!("holder {i}'s loss callback was told {told:?}"));
        }
        if h.seat.is_valid() {
            problems.push(format!("holder {i} still valid: {:?}", h.seat.state()));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");

    // Back: each of those clients checks out again.
    let mut again = Vec::new();
    let mut took = Vec::new();
    for (i, h) in holders.iter().enumerate() {
        let t = Instant::now();
        let seat = h
            .client
            .checkout(FEATURE)
            .await
            .unwrap_or_else(|e| panic!("holder {i}: a checkout after the proxy's return: {e}"));
        took.push(t.elapsed());
        assert_ne!(seat.lease(), h.lease, "a new lease");
        again.push(seat);
    }
    let first_back = took[0];
    let old_still_held = c
        .server_leases()
        .await
        .iter()
        .filter(|l| holders.iter().any(|h| &h.lease == *l))
        .count();

    eprintln!(
        "proxy down {:.2} s (lease_ttl {} s), {HOLDERS} holders told of their loss {:?} ms after the stop, {:?} ms after their promise's end",
        outage.as_secs_f64(),
        TTL.as_secs(),
        lost.iter().map(|(at, _)| ms(*at - down)).collect::<Vec<_>>(),
        lateness.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    );
    eprintln!(
        "  a checkout while down failed after {} ms: {refused_msg:?}",
        ms(refused_took)
    );
    eprintln!(
        "  after the return: checkouts again took {:?} ms (the first {} ms after the proxy was back); {old_still_held} lost leases still hold their seats on the server until they run out",
        took.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        ms(first_back)
    );
    assert!(
        lateness.iter().all(|d| *d < Duration::from_secs(1)),
        "told late: {lateness:?}"
    );
    assert!(
        took.iter().all(|d| *d < Duration::from_secs(2)),
        "checkouts after the return: {took:?}"
    );
    for s in again {
        assert!(s.release().await);
    }
    eprintln!("  whole test {:.1} s", began.elapsed().as_secs_f64());
    if let Some(w) = wording("a checkout while down", &proxy, &refused_msg) {
        panic!("a checkout while the proxy was down was refused with a misleading message: {w}");
    }
}
