//! Active-active behind a real NGINX, for each shipped sticky policy: 50
//! clients hold seats through the proxy, one instance is killed with SIGKILL,
//! every client keeps its lease, the live count never exceeds N, and the
//! restarted instance takes traffic again.

use floatlm_client::{Client, HandleState, Options};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::nginx::{front, start_nginx, ServerParams};
use testkit::{
    admin_cli, cli_license, cluster_instance, created_credential, wait_for, ServerProc, TestDb,
};

const CLIENTS: usize = 50;
/// A killed instance is back in the pool 2 s after its last failure.
const FAIL_FAST: ServerParams = ServerParams::These("max_fails=1 fail_timeout=2s");

fn instance(dir: &Path, db: &TestDb, id: &str, listen: &str, pubkey: &str) -> ServerProc {
    cluster_instance(
        dir,
        db,
        id,
        listen,
        &["--vendor-key", pubkey, "--lease-ttl", "5s"],
        &[],
    )
}

async fn survive_sigkill_behind(policy: &str) {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pubkey, lic) = cli_license(d, "NGX", "cad", CLIENTS as u32);

    let ids = ["lic-1", "lic-2", "lic-3"];
    let mut servers: Vec<ServerProc> = ids
        .iter()
        .map(|id| instance(d, &db, id, "127.0.0.1:0", &pubkey))
        .collect();
    let (_nginx, proxy, cred) = front(&servers, policy, d, FAIL_FAST, &lic, "nginx");
    let ident = format!("{cred}@{proxy}");

    // The auditor: the database's own count of valid leases, polled throughout.
    let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicI64::new(0));
    let auditor = {
        let (stop, peak, pool) = (stop.clone(), peak.clone(), pool.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM slots WHERE state IN (0, 1) AND expires_at > NOW(6)",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                peak.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let opts = || Options {
        retry_interval: Duration::from_millis(200),
        request_timeout: Duration::from_secs(3),
        ..Options::default()
    };
    let mut clients = Vec::new();
    let mut seats = Vec::new();
    for _ in 0..CLIENTS {
        let c = Client::connect(&[&ident], opts()).await.unwrap();
        seats.push(c.checkout("cad").await.unwrap());
        clients.push(c);
    }
    let leases: Vec<String> = seats.iter().map(|s| s.lease()).collect();
    let logins: Vec<u64> = clients
        .iter()
        .map(|c| c.session_stats().handshakes)
        .collect();
    // Kill the instance that granted the most leases.
    let mut by_instance: HashMap<String, usize> = HashMap::new();
    for c in &clients {
        *by_instance
            .entry(c.server_status()[0].instance.clone().unwrap())
            .or_default() += 1;
    }
    let (victim_id, on_victim) = by_instance
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(k, v)| (k.clone(), *v))
        .unwrap();
    let victim = ids.iter().position(|i| *i == victim_id).unwrap();
    let victim_addr = servers[victim].licensing.clone();
    servers[victim].signal(libc::SIGKILL);
    servers[victim].wait_exit(Duration::from_secs(10)).unwrap();
    let killed = Instant::now();
    eprintln!("{policy}: killed {victim_id}, which served {on_victim} of {CLIENTS} clients");

    // Past a whole TTL later, every handle still holds the same lease.
    wait_for(
        "every client to keep its seat across the kill",
        Duration::from_secs(30),
        || async {
            let all_held = seats.iter().all(|s| s.state() == HandleState::Held);
            (killed.elapsed() > Duration::from_secs(7) && all_held).then_some(())
        },
    )
    .await;
    let after: Vec<String> = seats.iter().map(|s| s.lease()).collect();
    assert_eq!(after, leases, "same leases");
    // No client logged in again: the victim's clients resumed with tickets.
    let stats: Vec<_> = clients.iter().map(|c| c.session_stats()).collect();
    let now_logins: Vec<u64> = stats.iter().map(|s| s.handshakes).collect();
    assert_eq!(now_logins, logins, "no second login: {stats:?}");
    let resumed = stats.iter().filter(|s| s.resumes > 0).count();
    assert!(
        resumed >= on_victim,
        "{resumed} clients resumed, {on_victim} were on the killed instance"
    );
    let live: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM slots WHERE state IN (0, 1) AND expires_at > NOW(6)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(live, CLIENTS as i64, "every seat is still held");

    // The killed instance comes back on its address and takes new clients.
    servers[victim] = instance(d, &db, &victim_id, &victim_addr, &pubkey);
    wait_for(
        "the restarted instance to take traffic",
        Duration::from_secs(60),
        || async {
            let c = Client::connect(&[&ident], opts()).await.ok()?;
            (c.server_status()[0].instance.as_deref() == Some(victim_id.as_str())).then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    auditor.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= CLIENTS as i64,
        "{peak} valid leases at once; {CLIENTS} are licensed"
    );
    for s in seats {
        s.release().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consistent_hash_on_x_ldk_instance() {
    survive_sigkill_behind("floatlm-hash.conf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ip_hash() {
    survive_sigkill_behind("floatlm-iphash.conf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_cookie() {
    survive_sigkill_behind("floatlm-cookie.conf").await;
}

/// `cluster drain` under load: new sessions move to the other instances,
/// existing clients keep working, and the drained instance then stops with
/// exit 0 — with no client ever losing or failing to renew its seat.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_under_load_fails_no_client_operation() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pubkey, lic) = cli_license(d, "DRN", "cad", 40);
    let ids = ["lic-1", "lic-2", "lic-3"];
    let mut servers: Vec<ServerProc> = ids
        .iter()
        .map(|id| instance(d, &db, id, "127.0.0.1:0", &pubkey))
        .collect();
    let (_nginx, proxy, cred) = front(&servers, "floatlm-hash.conf", d, FAIL_FAST, &lic, "drain");
    let ident = format!("{cred}@{proxy}");
    let opts = || Options {
        retry_interval: Duration::from_millis(200),
        request_timeout: Duration::from_secs(3),
        ..Options::default()
    };

    let mut clients = Vec::new();
    let mut seats = Vec::new();
    for _ in 0..20 {
        let c = Client::connect(&[&ident], opts()).await.unwrap();
        seats.push(c.checkout("cad").await.unwrap());
        clients.push(c);
    }
    let leases: Vec<String> = seats.iter().map(|s| s.lease()).collect();
    let victim = 1;
    // A sampler watches every handle: none may ever be anything but Held.
    let seats = Arc::new(seats);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (seats, stop) = (seats.clone(), stop.clone());
        tokio::spawn(async move {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for s in seats.iter() {
                    let st = s.state();
                    if st != HandleState::Held {
                        bad.push(format!("{}: {st:?}", s.lease()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            bad
        })
    };
    admin_cli(&servers[0], &["cluster", "drain", ids[victim]]);
    let lic_victim = servers[victim].licensing.clone();
    wait_for(
        "the drained instance's healthz to answer 503",
        Duration::from_secs(20),
        || {
            let url = format!("http://{lic_victim}/sentinel/ldk/v1/healthz");
            async move { (reqwest::get(url).await.ok()?.status() == 503).then_some(()) }
        },
    )
    .await;
    // New clients all land elsewhere, and keep checking out through the proxy.
    for _ in 0..15 {
        let c = Client::connect(&[&ident], opts()).await.unwrap();
        assert_ne!(
            c.server_status()[0].instance.as_deref(),
            Some(ids[victim]),
            "a draining instance takes no new session"
        );
        let s = c.checkout("cad").await.unwrap();
        s.release().await;
    }
    // Then it stops cleanly; its clients move without a failed operation.
    servers[victim].signal(libc::SIGTERM);
    let code = servers[victim]
        .wait_exit(Duration::from_secs(20))
        .expect("the drained instance exits");
    assert_eq!(code.code(), Some(0));
    let stopped = Instant::now();
    wait_for(
        "two TTLs after the stop",
        Duration::from_secs(30),
        || async { (stopped.elapsed() > Duration::from_secs(10)).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let bad = sampler.await.unwrap();
    assert!(
        bad.is_empty(),
        "handles left Held: {:?}",
        &bad[..bad.len().min(10)]
    );
    let after: Vec<String> = seats.iter().map(|s| s.lease()).collect();
    assert_eq!(after, leases);
}

/// A stand-in for an upstream that dies mid-request: it forwards each
/// connection's one request to `target`, but when `cut` is set, the first
/// sealed request is delivered and its answer dropped.
async fn cutter(listener: tokio::net::TcpListener, target: String, cut: Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        let (target, cut) = (target.clone(), cut.clone());
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut tmp = [0u8; 8192];
            let head_end = loop {
                let n = inbound.read(&mut tmp).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&tmp[..n]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let n = inbound.read(&mut tmp).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let Ok(mut up) = tokio::net::TcpStream::connect(&target).await else {
                return;
            };
            up.write_all(&buf).await.unwrap();
            let mut resp = Vec::new();
            let _ = up.read_to_end(&mut resp).await;
            if head.starts_with("post /sentinel/ldk/v1/request")
                && cut.swap(false, Ordering::SeqCst)
            {
                return; // the upstream "died": the request was acted on, the answer is lost
            }
            let _ = inbound.write_all(&resp).await;
        });
    }
}

/// NGINX retries a login on another instance after the first died while
/// answering it: the seat is granted once, and the client gets that grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_retried_after_the_upstream_died_mid_request_grants_once() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pubkey, lic) = cli_license(d, "CUT", "cad", 3);
    let a = instance(d, &db, "lic-1", "127.0.0.1:0", &pubkey);
    let b = instance(d, &db, "lic-2", "127.0.0.1:0", &pubkey);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cut_addr = listener.local_addr().unwrap().to_string();
    let cut = Arc::new(AtomicBool::new(false));
    tokio::spawn(cutter(listener, a.licensing.clone(), cut.clone()));
    let (_nginx, proxy) = start_nginx(
        "floatlm-hash.conf",
        &[cut_addr, b.licensing.clone()],
        d,
        false,
        FAIL_FAST,
    );
    let admin_at = &a;
    admin_cli(admin_at, &["apply", &lic]);
    let out = admin_cli(admin_at, &["identity", "create", "--name", "cut"]);
    let ident = format!("{}@{proxy}", created_credential(&out));
    let opts = || Options {
        retry_interval: Duration::from_millis(200),
        request_timeout: Duration::from_secs(3),
        ..Options::default()
    };
    // A client whose session lives on lic-1, behind the cutter.
    let mut client = None;
    for _ in 0..60 {
        let c = Client::connect(&[&ident], opts()).await.unwrap();
        if c.server_status()[0].instance.as_deref() == Some("lic-1") {
            client = Some(c);
            break;
        }
    }
    let client = client.expect("some client id hashes to lic-1");
    cut.store(true, Ordering::SeqCst);
    let seat = client.checkout("cad").await.unwrap();
    assert!(
        !cut.load(Ordering::SeqCst),
        "the answer to the login was dropped once"
    );
    let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
    let live: Vec<(i64, i64, i64, i64)> =
        sqlx::query_as("SELECT feature_id, CAST(slot_no AS SIGNED), lease_gen, lease_nonce FROM slots WHERE state IN (0, 1) AND expires_at > NOW(6)")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(live.len(), 1, "one login, one seat: {live:?}");
    assert_eq!(
        seat.lease(),
        format!(
            "{}.{}.{}.{:016x}",
            live[0].0, live[0].1, live[0].2, live[0].3
        )
    );
    let requests: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM grant_requests")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(requests, 1);
}

/// A full instance (its `max_sessions` reached) stays in the pool behind
/// the shipped `floatlm-hash.conf` with its own `max_fails=1
/// fail_timeout=5s`: one client too many is refused `429
/// too_many_sessions`, passed on by NGINX, and the clients the full
/// instance serves are answered there right after. When the refusal was a
/// 503, NGINX retried it elsewhere and counted it as a failure, so the full
/// instance was out for 5 s and every client it served got
/// `session_unknown` from the other instance (the benchmark's errors after
/// its 100,000-lease scenario, docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_stays_in_the_pool() {
    use floatlm_protocol::messages::Request;
    use testkit::raw::{Answer, Raw};
    const FULL: usize = 2;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pubkey, lic) = cli_license(d, "FUL", "cad", 4);
    let max = FULL.to_string();
    let full = cluster_instance(
        d,
        &db,
        "full-1",
        "127.0.0.1:0",
        &["--vendor-key", &pubkey],
        &[("FLOATLM_MAX_SESSIONS", &max)],
    );
    let other = instance(d, &db, "other-2", "127.0.0.1:0", &pubkey);
    let upstreams = [full.licensing.clone(), other.licensing.clone()];
    let (_nginx, proxy) = start_nginx(
        "floatlm-hash.conf",
        &upstreams,
        d,
        true,
        ServerParams::Shipped,
    );
    admin_cli(&full, &["apply", &lic]);
    let out = admin_cli(&full, &["identity", "create", "--name", "full"]);
    let ident = format!("{}@{proxy}", created_credential(&out));
    let info = Request::Info { features: vec![] };

    // Client ids NGINX hashes to the small instance: a handshake's answer
    // names its instance, and a session still pending counts nothing.
    let mut hashed_there: Vec<(Raw, String)> = Vec::new();
    for _ in 0..400 {
        if hashed_there.len() == FULL + 1 {
            break;
        }
        let key = format!("{:024x}", rand::random::<u128>() >> 32);
        let (raw, at) = Raw::connect_as(&proxy, &ident, &key)
            .await
            .unwrap_or_else(|e| panic!("a handshake before the instance was full: {e:?}"));
        if at == "full-1" {
            hashed_there.push((raw, key));
        }
    }
    assert_eq!(
        hashed_there.len(),
        FULL + 1,
        "too few client ids hashed to full-1"
    );
    let (_, extra) = hashed_there.pop().unwrap();
    // Their first requests make FULL sessions live: the instance is full.
    for (raw, key) in &hashed_there {
        match raw.call(key, &info).await {
            Answer::Sealed(_) => {}
            Answer::Plain(s, v) => panic!("a first request was refused: {s} {v}"),
        }
    }

    match Raw::connect_as(&proxy, &ident, &extra).await {
        Err((429, v)) => assert_eq!(v["error"], "too_many_sessions", "{v}"),
        Err((s, v)) => panic!("one client too many got {s} {v}, not 429 too_many_sessions"),
        Ok((_, at)) => panic!(
            "one client too many got a session on {at}: NGINX retried the refusal on \
             another instance, so it counted it against full-1"
        ),
    }
    // At once, with no wait: the full instance still serves its clients.
    for (raw, key) in &hashed_there {
        match raw.call(key, &info).await {
            Answer::Sealed(_) => {}
            Answer::Plain(s, v) => panic!(
                "a client of the full instance got {s} {v} right after one client too many \
                 was refused: NGINX took the full instance out of the pool"
            ),
        }
    }
    drop(other);
}
