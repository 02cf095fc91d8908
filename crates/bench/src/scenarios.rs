//! The scenarios, and the orchestrated run that measures them next to the
//! baselines.

use anyhow::{bail, Context};
use floatlm_client::{Client, Options};
use floatlm_protocol::messages::Request;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::baseline::{self, TempDb};
use crate::load::{closed_loop, paced, Stats};
use crate::procs::{self, Instance};
use crate::setup::{repo_file, Setup};
use crate::vclient::{self, client_id, Identity, VSession};
use crate::Args;

/// Features of the benchmark license: checkout cycles, the heartbeat
/// scenario's leases (both phases), and the paced live-lease scenario.
pub(crate) const CYCLE: &str = "cycle";
pub(crate) const HELD: &str = "held";
pub(crate) const LIVE: &str = "live";
/// Checkouts that are never released in the run: each phase takes at most
/// BURST_CAP of its BURST_SEATS seats.
pub(crate) const BURST: &str = "burst";
const BURST_CAP: u64 = 50_000;
pub(crate) const BURST_SEATS: u64 = 2 * BURST_CAP;
pub(crate) const BENCH_FEATURES: Features = Features {
    cycle: CYCLE,
    held: HELD,
    burst: BURST,
    burst_cap: BURST_CAP,
};
/// The Galera part's: the same features, fewer seats.
pub(crate) const GALERA_FEATURES: Features = Features {
    burst_cap: 20_000,
    ..BENCH_FEATURES
};

/// Server-side cost of one scenario, from /proc.
#[derive(Debug, Clone, Default)]
pub struct ServerUsage {
    pub instances: usize,
    /// CPU time of all instances over the scenario's wall time, in cores.
    pub cpu_cores: f64,
    pub rss_max_mb: f64,
}

#[derive(Debug, Clone)]
pub struct Measured {
    pub scenario: &'static str,
    pub target: String,
    pub clients: usize,
    pub stats: Stats,
    pub server: Option<ServerUsage>,
    /// On a Galera cluster: the certification conflicts met meanwhile.
    pub conflicts: Option<crate::galera::Conflicts>,
    /// The machine's CPU during the scenario, in cores, by who spent it.
    pub cpu: Option<procs::CpuSplit>,
}

/// What is watched around a scenario: the instances' processes and, on a
/// Galera cluster, the conflict counters.
#[derive(Default)]
pub struct Watch {
    pub pids: Vec<u32>,
    pub galera: Option<crate::galera::Counters>,
}

impl Watch {
    pub fn pids(pids: &[u32]) -> Watch {
        Watch {
            pids: pids.to_vec(),
            galera: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LiveLeases {
    pub leases: usize,
    pub interval_s: f64,
    pub setup_s: f64,
    pub rss_per_instance_mb: Vec<f64>,
    pub sessions_per_instance: Vec<u64>,
    /// Lease renewals of the live-lease run: (answered from a read, written).
    pub renewals: (u64, u64),
}

#[derive(Debug, Clone, Default)]
pub struct Results {
    pub command: String,
    pub quick: bool,
    pub machine: Vec<(String, String)>,
    pub rows: Vec<Measured>,
    pub live: Option<LiveLeases>,
}

impl Results {
    pub fn find(&self, scenario: &str, target_prefix: &str) -> Option<&Measured> {
        self.rows
            .iter()
            .find(|m| m.scenario == scenario && m.target.starts_with(target_prefix))
    }
}

pub(crate) fn http_client(clients: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(clients.max(16) * 2)
        .timeout(Duration::from_secs(15))
        .build()?)
}

/// Runs `f` and measures what `watch` names around it.
async fn measured<Fut>(
    scenario: &'static str,
    target: &str,
    clients: usize,
    watch: &Watch,
    f: Fut,
) -> Measured
where
    Fut: std::future::Future<Output = Stats>,
{
    let pids = &watch.pids;
    let conflicts_before = match &watch.galera {
        Some(g) => Some(g.read().await),
        None => None,
    };
    let before: Vec<(u64, f64)> = pids.iter().map(|p| procs::proc_usage(*p)).collect();
    let split_before = procs::CpuSplit::sample(pids);
    let t0 = Instant::now();
    let stats = f.await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = procs::CpuSplit::sample(pids).cores_since(&split_before, wall);
    let after: Vec<(u64, f64)> = pids.iter().map(|p| procs::proc_usage(*p)).collect();
    let conflicts = match (&watch.galera, conflicts_before) {
        (Some(g), Some(b)) => Some(g.read().await.since(&b)),
        _ => None,
    };
    let server = (!pids.is_empty()).then(|| ServerUsage {
        instances: pids.len(),
        cpu_cores: before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.1 - b.1)
            .sum::<f64>()
            / wall.max(1e-9),
        rss_max_mb: after.iter().map(|a| a.0).max().unwrap_or(0) as f64 / 1048576.0,
    });
    let m = Measured {
        scenario,
        target: target.to_string(),
        clients,
        stats,
        server,
        conflicts,
        cpu: Some(cpu),
    };
    crate::report::print_row(&m);
    m
}

/// A baseline's row: what `run` measured, with the machine's CPU meanwhile.
async fn baseline_row(
    scenario: &'static str,
    target: &str,
    clients: usize,
    run: impl std::future::Future<Output = anyhow::Result<(Stats, procs::CpuSplit)>>,
) -> anyhow::Result<Measured> {
    let (stats, cpu) = run.await?;
    let m = Measured {
        scenario,
        target: target.to_string(),
        clients,
        stats,
        server: None,
        conflicts: None,
        cpu: Some(cpu),
    };
    crate::report::print_row(&m);
    Ok(m)
}

/// Opens `n` sessions on `address`, each checking out one seat of `feature`
/// when given; `workers` at a time.
async fn open_sessions(
    http: &reqwest::Client,
    ident: &Identity,
    n: usize,
    feature: Option<&'static str>,
    workers: usize,
) -> anyhow::Result<Vec<Arc<VSession>>> {
    let out = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let (h, id, o) = (http.clone(), ident.clone(), out.clone());
    let stats = closed_loop(workers, Duration::from_secs(3600), n as u64, move |_, _| {
        let (http, ident, out) = (h.clone(), id.clone(), o.clone());
        async move {
            // As the client library does, a session the proxy moved to
            // another instance meanwhile (401 session_unknown: on Galera
            // under full load an instance can answer 503 for a moment, and
            // NGINX then hashes its clients elsewhere) is opened again, up
            // to three times; the scenarios measure, the setup only sets up.
            let mut last = None;
            for _ in 0..3 {
                let cid = client_id();
                let opened = async {
                    let s = vclient::handshake(&http, &ident, cid.clone()).await?;
                    if let Some(f) = feature {
                        s.login(&http, &ident.address, f, format!("{cid}:1"))
                            .await?;
                    }
                    Ok::<_, String>(s)
                }
                .await;
                match opened {
                    Ok(s) => {
                        out.lock().expect("lock").push(Arc::new(s));
                        return Ok(());
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.expect("three attempts"))
        }
    })
    .await;
    if stats.errors > 0 {
        bail!(
            "setup: {} of {n} sessions failed; first error: {}",
            stats.errors,
            stats.first_error.unwrap_or_default()
        );
    }
    let v = std::mem::take(&mut *out.lock().expect("lock"));
    Ok(v)
}

/// The features the standard scenarios use.
#[derive(Clone, Copy)]
pub(crate) struct Features {
    /// Checked out and released again (checkout_release).
    cycle: &'static str,
    /// Held by the heartbeat scenario's sessions.
    held: &'static str,
    /// Checked out and kept (checkout), at most `burst_cap` times.
    burst: &'static str,
    pub burst_cap: u64,
}

/// Every scenario [`standard_scenarios`] knows.
pub(crate) const STANDARD: &[&str] = &[
    "handshake",
    "query",
    "checkout",
    "checkout_release",
    "heartbeat",
];

/// handshake, query, checkout, checkout_release and heartbeat against one
/// address: those of `which` that `--only` asks for.
pub(crate) async fn standard_scenarios(
    args: &Args,
    http: &reqwest::Client,
    ident: &Identity,
    target: &str,
    watch: &Watch,
    features: &Features,
    which: &[&str],
) -> anyhow::Result<Vec<Measured>> {
    let wants = |s: &str| which.contains(&s) && args.wants(s);
    let Features {
        cycle: cycle_feature,
        held: held_feature,
        burst: burst_feature,
        burst_cap,
    } = *features;
    let (clients, secs) = (args.clients(), args.seconds());
    let mut rows = Vec::new();

    let (h, id) = (http.clone(), ident.clone());
    if wants("handshake") {
        rows.push(
            measured("handshake", target, clients, watch, async move {
                closed_loop(clients, secs, u64::MAX, move |_, _| {
                    let (http, ident) = (h.clone(), id.clone());
                    async move {
                        vclient::handshake(&http, &ident, client_id())
                            .await
                            .map(|_| ())
                    }
                })
                .await
            })
            .await,
        );
    }

    if wants("query") {
        let sessions = Arc::new(open_sessions(http, ident, clients, None, clients).await?);
        let (h, addr, ss) = (http.clone(), ident.address.clone(), sessions.clone());
        rows.push(
            measured("query", target, clients, watch, async move {
                closed_loop(clients, secs, u64::MAX, move |w, _| {
                    let (http, addr, ss) = (h.clone(), addr.clone(), ss.clone());
                    async move {
                        let req = Request::Info {
                            features: vec![cycle_feature.to_string()],
                        };
                        ss[w].call(&http, &addr, &req).await.map(|_| ())
                    }
                })
                .await
            })
            .await,
        );
    }

    // Checkouts alone (one seat operation each, like one baseline
    // transaction): every login takes a new seat, none is released here.
    if wants("checkout") {
        let sessions = Arc::new(open_sessions(http, ident, clients, None, clients).await?);
        let (h, addr, ss) = (http.clone(), ident.address.clone(), sessions.clone());
        let tag: u32 = rand::random();
        rows.push(
            measured("checkout", target, clients, watch, async move {
                closed_loop(clients, secs, burst_cap, move |w, n| {
                    let (http, addr, ss) = (h.clone(), addr.clone(), ss.clone());
                    async move {
                        ss[w]
                            .login(&http, &addr, burst_feature, format!("b{tag:08x}-{w}-{n}"))
                            .await
                    }
                })
                .await
            })
            .await,
        );
    }

    // The client library itself: checkout (a login with a request id) and release.
    if wants("checkout_release") {
        let mut libs = Vec::new();
        for _ in 0..clients {
            libs.push(
                Client::connect(&[ident.to_identity_string()], Options::default())
                    .await
                    .with_context(|| {
                        format!("client library cannot connect to {}", ident.address)
                    })?,
            );
        }
        let libs = Arc::new(libs);
        rows.push(
            measured("checkout_release", target, clients, watch, async move {
                closed_loop(clients, secs, u64::MAX, move |w, _| {
                    let libs = libs.clone();
                    async move {
                        let seat = libs[w]
                            .checkout(cycle_feature)
                            .await
                            .map_err(|e| e.to_string())?;
                        if seat.release().await {
                            Ok(())
                        } else {
                            Err("release answered not released".into())
                        }
                    }
                })
                .await
            })
            .await,
        );
    }

    if wants("heartbeat") {
        let held =
            Arc::new(open_sessions(http, ident, args.leases(), Some(held_feature), clients).await?);
        let (h, addr) = (http.clone(), ident.address.clone());
        rows.push(
            measured("heartbeat", target, clients, watch, async move {
                closed_loop(clients, secs, u64::MAX, move |_, n| {
                    let (http, addr, held) = (h.clone(), addr.clone(), held.clone());
                    async move { held[n as usize % held.len()].heartbeat(&http, &addr).await }
                })
                .await
            })
            .await,
        );
    }
    Ok(rows)
}

/// Loads a server someone else started (no baselines, no server figures).
pub async fn external(args: &Args, identity: &str) -> anyhow::Result<Results> {
    let ident = Identity::parse(identity)?;
    crate::ensure_loopback(&ident.address)?;
    let http = http_client(args.clients())?;
    let feature: &'static str = Box::leak(args.feature.clone().into_boxed_str());
    let rows = standard_scenarios(
        args,
        &http,
        &ident,
        &format!("external {}", ident.address),
        &Watch::default(),
        &Features {
            cycle: feature,
            held: feature,
            burst: feature,
            burst_cap: args.leases() as u64,
        },
        STANDARD,
    )
    .await?;
    Ok(Results {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: args.quick,
        machine: machine(None).await,
        rows,
        live: None,
    })
}

/// Lease renewals the instances answered from a check read alone, and the
/// extensions they wrote (in the background or before the answer), summed.
async fn renewals(
    http: &reqwest::Client,
    cluster: &[Instance],
    token: &str,
) -> anyhow::Result<(u64, u64)> {
    let mut sum = (0, 0);
    for inst in cluster {
        let st: serde_json::Value = http
            .get(format!("http://{}/admin/v1/status", inst.admin))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        let n = |k: &str| st["heartbeats"][k].as_u64().unwrap_or(0);
        sum.0 += n("answered_from_read");
        sum.1 += n("extended_in_background") + n("extended_before_answer");
    }
    Ok(sum)
}

/// The whole run: baselines, one instance, three instances behind NGINX,
/// and three instances on a 3-node Galera cluster (`--only` picks parts).
pub async fn full_run(args: &Args) -> anyhow::Result<Results> {
    if !args.floatlm.exists() {
        bail!(
            "{} does not exist: build it with cargo build --release (scripts/bench.sh does)",
            args.floatlm.display()
        );
    }
    let clients = args.clients();
    let dir = args.keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("floatlm-bench-{:08x}", rand::random::<u32>()))
    });
    std::fs::create_dir_all(&dir)?;
    let setup = Setup::new(&args.floatlm, dir.clone(), http_client(clients)?)?;
    let mut rows = Vec::new();
    let mut live = None;
    if args.runs_single_server() {
        live = single_server(args, &setup, &mut rows).await?;
    }
    if args.runs_part("galera") {
        rows.extend(crate::galera::run(args, &setup).await?);
    }
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(Results {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: args.quick,
        machine: machine(Some(&args.mysql)).await,
        rows,
        live,
    })
}

/// Baselines, one instance, three instances behind NGINX, on the one
/// database server of `--mysql`; the rows go to `rows` as they are measured.
async fn single_server(
    args: &Args,
    setup: &Setup,
    rows: &mut Vec<Measured>,
) -> anyhow::Result<Option<LiveLeases>> {
    let (clients, secs) = (args.clients(), args.seconds());
    let (http, dir, token) = (&setup.http, &setup.dir, &setup.token);
    let shipped_nginx = repo_file("nginx/floatlm-hash.conf");
    println!(
        "baselines ({clients} clients, {:.0} s each)",
        secs.as_secs_f64()
    );
    if args.wants("db_transaction") {
        let raw = baseline::db_transactions(&args.mysql, clients, secs);
        rows.push(baseline_row("db_transaction", "baseline: MariaDB, sqlx", clients, raw).await?);
    }
    if args.wants("nginx_proxy") {
        let raw = baseline::nginx_proxy(&shipped_nginx, dir, http, clients, secs);
        rows.push(
            baseline_row(
                "nginx_proxy",
                "baseline: NGINX, trivial upstream",
                clients,
                raw,
            )
            .await?,
        );
    }

    let db = TempDb::create(&args.mysql, "floatlm_bench").await?;
    let spec = setup.spec(args, &db.url);
    let result = async {
        let first = procs::start_instance(&spec, "bench-1")?;
        let ident = setup.seed(&first, &setup.lic).await?;

        println!("one instance, direct");
        let direct = ident.at(&first.licensing);
        rows.extend(
            standard_scenarios(
                args,
                http,
                &direct,
                "1 instance, direct",
                &Watch::pids(&[first.child.id()]),
                &BENCH_FEATURES,
                STANDARD,
            )
            .await?,
        );
        // Fresh instances for the cluster, so memory figures start clean.
        drop(first);
        let cluster: Vec<Instance> = ["bench-1", "bench-2", "bench-3"]
            .iter()
            .map(|id| procs::start_instance(&spec, id))
            .collect::<anyhow::Result<_>>()?;
        let pids: Vec<u32> = cluster.iter().map(|i| i.child.id()).collect();
        let upstreams: Vec<String> = cluster.iter().map(|i| i.licensing.clone()).collect();
        let nginx = procs::start_nginx(&shipped_nginx, &upstreams, dir)?;
        let proxied = ident.at(&nginx.address);

        // Live leases first, on fresh instances: N sessions, one lease each,
        // each heartbeating once per interval.
        let n = if args.wants("live_leases") {
            args.live_leases()
        } else {
            0
        };
        println!("three instances behind NGINX: {n} live leases");
        let t0 = Instant::now();
        let live_sessions =
            Arc::new(open_sessions(http, &proxied, n, Some(LIVE), clients.max(64)).await?);
        let setup_s = t0.elapsed().as_secs_f64();
        let mut live = LiveLeases {
            leases: n,
            interval_s: args.interval,
            setup_s,
            ..LiveLeases::default()
        };
        for inst in &cluster {
            live.rss_per_instance_mb
                .push(procs::proc_usage(inst.child.id()).0 as f64 / 1048576.0);
            let st: serde_json::Value = http
                .get(format!("http://{}/admin/v1/status", inst.admin))
                .bearer_auth(token)
                .send()
                .await?
                .json()
                .await?;
            live.sessions_per_instance
                .push(st["sessions"]["active"].as_u64().unwrap_or(0));
        }
        let before = renewals(http, &cluster, token).await?;
        let rate = n as f64 / args.interval.max(0.1);
        let run_for = if args.quick {
            secs * 2
        } else {
            Duration::from_secs_f64(args.interval * 2.0)
        };
        let (h, addr, ls) = (http.clone(), proxied.address.clone(), live_sessions.clone());
        if n > 0 {
            rows.push(
                measured(
                    "live_leases",
                    &format!("3 instances, NGINX, {n} leases / {:.0} s", args.interval),
                    clients,
                    &Watch::pids(&pids),
                    async move {
                        paced(rate, run_for, 4096, move |i| {
                            let (http, addr, ls) = (h.clone(), addr.clone(), ls.clone());
                            async move { ls[i as usize % ls.len()].heartbeat(&http, &addr).await }
                        })
                        .await
                    },
                )
                .await,
            );
        }
        let after = renewals(http, &cluster, token).await?;
        live.renewals = (after.0 - before.0, after.1 - before.1);
        live.rss_per_instance_mb = cluster
            .iter()
            .map(|i| procs::proc_usage(i.child.id()).0 as f64 / 1048576.0)
            .collect();
        drop(live_sessions);

        println!("three instances behind NGINX");
        rows.extend(
            standard_scenarios(
                args,
                http,
                &proxied,
                "3 instances, NGINX",
                &Watch::pids(&pids),
                &BENCH_FEATURES,
                STANDARD,
            )
            .await?,
        );
        drop(nginx);
        drop(cluster);
        anyhow::Ok((n > 0).then_some(live))
    }
    .await;
    db.drop_now().await;
    result
}

/// What the figures were measured on.
pub(crate) async fn machine(mysql: Option<&str>) -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or("unknown".into(), |kb| {
            format!("{:.0} GiB", kb as f64 / 1048576.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut m = vec![
        ("CPU".to_string(), format!("{cpu} ({cores} cores)")),
        ("memory".to_string(), mem),
        ("kernel".to_string(), kernel),
    ];
    if let Some(url) = mysql {
        let v = async {
            let pool = sqlx::MySqlPool::connect(url).await.ok()?;
            let v: String = sqlx::query_scalar("SELECT VERSION()")
                .fetch_one(&pool)
                .await
                .ok()?;
            pool.close().await;
            Some(v)
        }
        .await;
        m.push(("database".into(), v.unwrap_or_else(|| "unknown".into())));
    }
    if let Ok(nginx) = procs::nginx_binary() {
        let v = std::process::Command::new(nginx)
            .arg("-v")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
            .unwrap_or_default();
        m.push(("proxy".into(), v.replace("nginx version: ", "")));
    }
    m.push((
        "floatlm".into(),
        format!("{} (release build)", env!("CARGO_PKG_VERSION")),
    ));
    m.push((
        "load generator".into(),
        "floatlm-bench on the same machine (it competes with the servers for the same cores)"
            .into(),
    ));
    m
}
