//! `GET /metrics` on the admin listener (docs/operations.md, "Metrics"): a
//! real `floatlm serve` on SQLite and on MariaDB is scraped while clients
//! check out, heartbeat, release and get refused; every scrape passes
//! `promtool check metrics`, the counters match what the clients saw, the
//! seat gauges match `admin features`, and no label carries a lease id, a
//! user, a host or an identity. The role check: monitor tokens read it, no
//! token is refused unless `metrics_public = true`.

use floatlm_client::{AuthInfo, Client, ClientError, NoLicenseReason, Options};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::{DemoServer, Kind, TestDb};

/// Distinctive names the clients report: they must never show in /metrics.
const USER: &str = "metrics-user-q7zk";
const HOST: &str = "metrics-host-w3xv";

/// Every label name /metrics may use (`le` is the histograms').
const LABELS: &[&str] = &[
    "feature",
    "reason",
    "answer",
    "outcome",
    "operation",
    "code",
    "kind",
    "result",
    "batch",
    "call",
    "state",
    "pool",
    "version",
    "backend",
    "instance_id",
    "le",
];

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn scrape(server: &DemoServer) -> String {
    let (status, text) = get(
        &format!("http://{}/metrics", server.proc.admin),
        Some(&server.admin_token),
    )
    .await;
    assert_eq!(status, 200, "GET /metrics: {text}");
    text
}

/// Runs `promtool check metrics` on `text`; panics with its findings.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install it with `apt-get install -y prometheus` \
                 (scripts/test.sh does)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the scrape:\n{}{}\n--- the scrape:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the samples of a scrape (our label values hold no `"` or `,`).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {l}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((n, rest)) => {
                    let inner = rest.strip_suffix('}').unwrap();
                    let labels = inner
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once("=\"").unwrap();
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (n.to_string(), labels)
                }
            };
            (name, labels, value)
        })
        .collect()
}

/// The value of the sample `name` whose labels include `want`, or 0 when
/// there is none (a counter not yet incremented is absent).
fn value(all: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    all.iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

/// `admin features` (the admin API) as (total, used, free) per feature.
async fn admin_features(server: &DemoServer) -> BTreeMap<String, (i64, i64, i64)> {
    let (status, text) = get(
        &format!("http://{}/admin/v1/features", server.proc.admin),
        Some(&server.admin_token),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let n = |k: &str| f[k].as_i64().unwrap();
            (
                f["name"].as_str().unwrap().to_string(),
                (n("total"), n("used"), n("free")),
            )
        })
        .collect()
}

/// The seat gauges of a scrape, per feature.
fn seat_gauges(all: &[Sample]) -> BTreeMap<String, (i64, i64, i64)> {
    let mut out = BTreeMap::new();
    for (name, labels, v) in all {
        let Some(f) = labels.get("feature") else {
            continue;
        };
        let e: &mut (i64, i64, i64) = out.entry(f.clone()).or_default();
        match name.as_str() {
            "floatlm_feature_seats" => e.0 = *v as i64,
            "floatlm_feature_seats_used" => e.1 = *v as i64,
            "floatlm_feature_seats_free" => e.2 = *v as i64,
            _ => {}
        }
    }
    out.retain(|f, _| {
        all.iter()
            .any(|(n, l, _)| n == "floatlm_feature_seats" && l.get("feature") == Some(f))
    });
    out
}

/// What the clients of the load saw.
#[derive(Default)]
struct Seen {
    granted: AtomicU64,
    all_taken: AtomicU64,
    released: AtomicU64,
    unknown: AtomicU64,
    leases: std::sync::Mutex<BTreeSet<String>>,
}

const CLIENTS: usize = 8;
/// Checkouts per client at most; the load also stops after LOAD_FOR.
const ROUNDS: usize = 40;
const LOAD_FOR: Duration = Duration::from_secs(6);

/// One client: checkouts of `demo` (5 seats for 8 clients, so some are
/// refused), each held a moment and released; the first one is held long
/// enough for heartbeats (lease_ttl 5 s: the client heartbeats every ~1.7 s).
async fn client_load(identity: String, seen: Arc<Seen>, n: usize) {
    let opts = Options {
        request_timeout: Duration::from_secs(10),
        auth: AuthInfo {
            user: USER.into(),
            host: HOST.into(),
            ..AuthInfo::default()
        },
        ..Options::default()
    };
    let client = Client::connect(&[identity.as_str()], opts).await.unwrap();
    let started = Instant::now();
    for round in 0..ROUNDS {
        if started.elapsed() > LOAD_FOR {
            break;
        }
        match client.checkout("demo").await {
            Ok(seat) => {
                seen.granted.fetch_add(1, Ordering::SeqCst);
                seen.leases.lock().unwrap().insert(seat.lease());
                let hold = if round == 0 && n < 3 {
                    Duration::from_millis(2500)
                } else {
                    Duration::from_millis(20 + 10 * (n as u64 % 4))
                };
                tokio::time::sleep(hold).await;
                assert!(seat.release().await, "release of a live seat");
                seen.released.fetch_add(1, Ordering::SeqCst);
            }
            Err(ClientError::NoLicense {
                reason: NoLicenseReason::AllSeatsTaken,
                ..
            }) => {
                seen.all_taken.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            Err(e) => panic!("client {n}: unexpected checkout error: {e}"),
        }
    }
    match client.checkout("no-such-feature").await {
        Err(ClientError::NoLicense {
            reason: NoLicenseReason::UnknownFeature,
            ..
        }) => {
            seen.unknown.fetch_add(1, Ordering::SeqCst);
        }
        other => panic!(
            "a login of an unknown feature: {:?}",
            other.map(|s| s.lease())
        ),
    }
}

async fn scraped_during_load(kind: Kind) {
    let db = TestDb::for_kind(kind).await;
    let server = DemoServer::start_on(db.as_ref(), &["--lease-ttl", "5s"], &[]);
    let seen = Arc::new(Seen::default());
    let mut load = tokio::task::JoinSet::new();
    for n in 0..CLIENTS {
        load.spawn(client_load(server.identity.clone(), seen.clone(), n));
    }
    // Scrape while the load runs: every scrape is valid exposition text.
    let mut scrapes = 0;
    while !load.is_empty() {
        let text = scrape(&server).await;
        promtool_check(&text);
        scrapes += 1;
        tokio::select! {
            done = load.join_next() => {
                if let Some(r) = done {
                    r.unwrap();
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    assert!(scrapes >= 5, "only {scrapes} scrapes during the load");
    // A wrong secret fails the handshake.
    let (id, rest) = server.identity.split_once(':').unwrap();
    let (_, addr) = rest.rsplit_once('@').unwrap();
    let wrong = format!("{id}:{}@{addr}", "0".repeat(43));
    let bad = Client::connect(
        &[wrong.as_str()],
        Options {
            request_timeout: Duration::from_secs(5),
            max_retries: Some(0),
            ..Options::default()
        },
    )
    .await;
    if let Ok(c) = bad {
        assert!(
            c.checkout("demo").await.is_err(),
            "a wrong secret got a seat"
        );
    }

    let granted = seen.granted.load(Ordering::SeqCst) as f64;
    let all_taken = seen.all_taken.load(Ordering::SeqCst) as f64;
    let released = seen.released.load(Ordering::SeqCst) as f64;
    let unknown = seen.unknown.load(Ordering::SeqCst) as f64;
    assert!(
        granted > 0.0 && all_taken > 0.0,
        "the load must grant and refuse: {granted} granted, {all_taken} refused"
    );

    let text = scrape(&server).await;
    promtool_check(&text);
    let all = samples(&text);
    let v = |name: &str, want: &[(&str, &str)]| value(&all, name, want);
    // The counters say what the clients saw (one instance, no resends).
    assert_eq!(
        v("floatlm_grants_total", &[("feature", "demo")]),
        granted,
        "{text}"
    );
    assert_eq!(
        v(
            "floatlm_denials_total",
            &[("feature", "demo"), ("reason", "all_seats_taken")]
        ),
        all_taken,
        "{text}"
    );
    assert_eq!(
        v(
            "floatlm_denials_total",
            &[("feature", ""), ("reason", "unknown_feature")]
        ),
        unknown,
        "{text}"
    );
    assert_eq!(
        v("floatlm_releases_total", &[("outcome", "released")]),
        released,
        "{text}"
    );
    assert!(
        v(
            "floatlm_request_duration_seconds_count",
            &[("operation", "login")]
        ) >= granted + all_taken + unknown,
        "{text}"
    );
    assert!(
        v(
            "floatlm_request_duration_seconds_count",
            &[("operation", "heartbeat")]
        ) >= 1.0,
        "the long holds heartbeat: {text}"
    );
    assert!(v("floatlm_heartbeat_leases_total", &[]) >= 1.0, "{text}");
    assert!(
        v(
            "floatlm_hellos_total",
            &[("kind", "handshake"), ("result", "ok")]
        ) >= CLIENTS as f64,
        "{text}"
    );
    assert!(
        v(
            "floatlm_hellos_total",
            &[("kind", "handshake"), ("result", "auth_failed")]
        ) >= 1.0,
        "the wrong secret's handshake: {text}"
    );
    assert!(
        v("floatlm_sessions_opened_total", &[("kind", "handshake")]) >= CLIENTS as f64,
        "{text}"
    );
    assert!(
        v("floatlm_batch_size_count", &[("batch", "grant")]) >= 1.0,
        "{text}"
    );
    assert!(
        v(
            "floatlm_db_call_duration_seconds_count",
            &[("call", "grant_batch")]
        ) >= 1.0,
        "{text}"
    );
    let backend = match kind {
        Kind::Sqlite => "sqlite",
        Kind::Mysql => "mysql",
    };
    assert_eq!(
        v(
            "floatlm_build_info",
            &[("backend", backend), ("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        v("floatlm_cluster_instances", &[("state", "up")]),
        1.0,
        "{text}"
    );
    assert!(v("floatlm_db_pool_max_connections", &[]) >= 1.0, "{text}");
    assert_eq!(v("floatlm_scrape_database_up", &[]), 1.0, "{text}");
    assert!(
        !text.contains("floatlm_backup_"),
        "no backup has run: {text}"
    );

    // Bounded labels: known label names, feature values from the licenses,
    // and nothing a client reported or a lease id.
    let leases = seen.leases.lock().unwrap().clone();
    assert!(!leases.is_empty());
    for (name, labels, _) in &all {
        for (k, val) in labels {
            assert!(LABELS.contains(&k.as_str()), "{name} has label {k}");
            if k == "feature" {
                assert!(val == "demo" || val.is_empty(), "{name} feature={val}");
            }
        }
    }
    for secret in leases
        .iter()
        .map(String::as_str)
        .chain([USER, HOST, id, "no-such-feature"])
    {
        assert!(!text.contains(secret), "/metrics shows {secret}:\n{text}");
    }

    // Quiet now: the seat gauges show what `admin features` shows (the
    // scrape's database read may be up to a second old: wait for it).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let admin = admin_features(&server).await;
        let gauges = seat_gauges(&samples(&scrape(&server).await));
        if gauges == admin {
            assert_eq!(admin["demo"].0, 5, "{admin:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seat gauges {gauges:?} never matched admin features {admin:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // With seats held, the gauges follow.
    let holder = Client::connect(&[server.identity.as_str()], Options::default())
        .await
        .unwrap();
    let (a, b) = (
        holder.checkout("demo").await.unwrap(),
        holder.checkout("demo").await.unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gauges = seat_gauges(&samples(&scrape(&server).await));
        let admin = admin_features(&server).await;
        if gauges.get("demo") == Some(&(5, 2, 3)) && gauges == admin {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "with 2 seats held: gauges {gauges:?}, admin features {admin:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.release().await;
    b.release().await;
    drop(db);
}

testkit::both_backends!(scraped_during_load);

/// Creates an admin token of `role`; returns its secret.
async fn token(server: &DemoServer, role: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("http://{}/admin/v1/tokens", server.proc.admin))
        .bearer_auth(&server.admin_token)
        .json(&serde_json::json!({"name": format!("scraper-{role}"), "role": role}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let v: serde_json::Value = r.json().await.unwrap();
    v["secret"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_token_reads_metrics_and_no_token_is_refused_unless_public() {
    let server = DemoServer::start(&[]);
    let url = format!("http://{}/metrics", server.proc.admin);
    let monitor = token(&server, "monitor").await;
    let (status, text) = get(&url, Some(&monitor)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("floatlm_build_info{"), "{text}");
    let (status, text) = get(&url, None).await;
    assert_eq!(status, 401, "no token: {text}");
    assert!(text.contains("Authorization"), "{text}");
    let (status, _) = get(&url, Some("not-a-token-0123456789")).await;
    assert_eq!(status, 401, "an unknown token");
    // The licensing listener does not serve it.
    let (status, _) = get(&format!("http://{}/metrics", server.proc.licensing), None).await;
    assert_eq!(status, 404, "/metrics on the licensing listener");

    let public = DemoServer::start_with(&[], &[("FLOATLM_METRICS_PUBLIC", "true")]);
    let (status, text) = get(&format!("http://{}/metrics", public.proc.admin), None).await;
    assert_eq!(status, 200, "metrics_public = true, no token: {text}");
    promtool_check(&text);
    // Only /metrics opens: the admin API still needs its token.
    let (status, _) = get(
        &format!("http://{}/admin/v1/features", public.proc.admin),
        None,
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_public_takes_only_true_or_false() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(testkit::bin())
        .args(["config", "check"])
        .env_clear()
        .env("FLOATLM_METRICS_PUBLIC", "yes")
        .env("FLOATLM_DATA_DIR", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("metrics_public") && err.contains("FLOATLM_METRICS_PUBLIC"),
        "{err}"
    );
}
