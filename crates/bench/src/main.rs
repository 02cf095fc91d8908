//! floatlm-bench: the load generator and benchmark harness.
//!
//! Without `--identity` it starts everything itself on loopback (a fresh
//! MariaDB database, one and then three floatlm instances, NGINX, and a
//! 3-node Galera cluster of its own with one instance per node), measures
//! the baselines (raw database transaction, NGINX proxying a trivial
//! upstream) and every scenario in the same run, and writes a table, a JSON
//! file and, with `--doc`, docs/benchmarks.md. `scripts/bench.sh` runs it.
//! With `--identity ID:SECRET@HOST:PORT` it only loads that server. With
//! `--compare OLD_BINARY` it compares an older floatlm with this one
//! (`compare.rs`, `scripts/bench-compare.sh`) and rewrites only that
//! section of the document.

mod baseline;
mod compare;
mod compare_report;
mod galera;
mod load;
mod procs;
mod report;
mod scenarios;
mod setup;
mod vclient;

use anyhow::{bail, Context};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "floatlm-bench",
    about = "floatlm load generator (loopback only)"
)]
pub struct Args {
    /// The short run (under three minutes): fewer clients, leases and seconds.
    #[arg(long)]
    pub quick: bool,
    /// Seconds per scenario [default: 4 quick, 15 full].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Concurrent clients per scenario [default: 32 quick, 64 full].
    #[arg(long)]
    pub clients: Option<usize>,
    /// Sessions holding one lease each for the heartbeat scenario, at most
    /// 10000 [default: 1000 quick, 5000 full].
    #[arg(long)]
    pub leases: Option<usize>,
    /// Live leases of the paced scenario on the three-instance cluster,
    /// each heartbeating every --interval [default: 5000 quick, 100000 full].
    #[arg(long)]
    pub live_leases: Option<usize>,
    /// Heartbeat interval of the paced scenario, seconds.
    #[arg(long, default_value = "30")]
    pub interval: f64,
    /// The floatlm binary to start.
    #[arg(long, default_value = "target/release/floatlm")]
    pub floatlm: PathBuf,
    /// MariaDB/MySQL server for the benchmark databases (created and dropped).
    #[arg(
        long,
        env = "FLOATLM_BENCH_MYSQL",
        default_value = "mysql://root@127.0.0.1:3306"
    )]
    pub mysql: String,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/results.json")]
    pub out: PathBuf,
    /// Rewrite this Markdown file (docs/benchmarks.md) with the results.
    #[arg(long)]
    pub doc: Option<PathBuf>,
    /// Load an already running server instead (its address must be loopback).
    #[arg(long, env = "FLOATLM_BENCH_IDENTITY", hide_env_values = true)]
    pub identity: Option<String>,
    /// Run only these scenarios (repeatable): handshake, query, checkout,
    /// checkout_release, heartbeat, live_leases, and the baselines
    /// db_transaction, nginx_proxy; or the part `galera` (three instances on
    /// a 3-node Galera cluster the bench starts: checkout, checkout_release,
    /// heartbeat), alone or with scenario names that then pick its
    /// scenarios too [default: all, Galera included].
    #[arg(long)]
    pub only: Vec<String>,
    /// Log level of the started instances; their logs are kept in --keep.
    #[arg(long, default_value = "warn")]
    pub server_log_level: String,
    /// Keep the instances' data and logs in this directory instead of a
    /// temporary one that is removed.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// With --identity: the feature to check out.
    #[arg(long, default_value = "bench")]
    pub feature: String,
    /// Compare this older floatlm binary with --floatlm instead of the full
    /// run: the single-instance scenarios on --mysql, alternately, round
    /// after round, each run on a fresh database (--floatlm also with the
    /// usage trigger dropped); with --doc only the comparison section of
    /// the page changes.
    #[arg(long, value_name = "OLD_FLOATLM_BINARY", conflicts_with = "identity")]
    pub compare: Option<PathBuf>,
    /// What to call the older binary in the comparison (its commit, say)
    /// [default: old].
    #[arg(long, requires = "compare")]
    pub compare_label: Option<String>,
    /// Rounds of the comparison, at most 20 [default: 2 quick, 3 full].
    #[arg(long, requires = "compare")]
    pub rounds: Option<usize>,
    /// `max_sessions` of every started instance [default: room for every
    /// session the run opens on any one instance, so that the sessions one
    /// scenario leaves behind (they live until `session_idle`) never refuse
    /// the next one's]. Smaller values show what a full instance does.
    #[arg(long, conflicts_with = "identity")]
    pub max_sessions: Option<usize>,
}

impl Args {
    /// Whether `--only` lets `scenario` run (part names do not count).
    pub fn wants(&self, scenario: &str) -> bool {
        let mut named = self.only.iter().filter(|s| !PARTS.contains(&s.as_str()));
        let mut again = named.clone();
        named.next().is_none() || again.any(|s| s == scenario)
    }

    /// Whether the run includes `part` (of [`PARTS`]).
    pub fn runs_part(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == part)
    }

    /// Whether the run includes the single-server part (baselines, one
    /// instance, three behind NGINX): unless `--only` names parts alone.
    pub fn runs_single_server(&self) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| !PARTS.contains(&s.as_str()))
    }

    pub fn seconds(&self) -> Duration {
        Duration::from_secs_f64(
            self.seconds
                .unwrap_or(if self.quick { 4.0 } else { 15.0 })
                .clamp(0.5, 600.0),
        )
    }
    pub fn clients(&self) -> usize {
        self.clients
            .unwrap_or(if self.quick { 32 } else { 64 })
            .clamp(1, 4096)
    }
    pub fn leases(&self) -> usize {
        self.leases
            .unwrap_or(if self.quick { 1000 } else { 5000 })
            .clamp(1, 10_000)
    }
    /// Sessions a run opens, all of which could land on one instance: the
    /// live leases, the heartbeat scenario's, and a few per client (query,
    /// checkout, checkout_release), per phase, with room to spare.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
            .unwrap_or(self.live_leases() + 2 * (self.leases() + 4 * self.clients()) + 1000)
    }
    pub fn rounds(&self) -> usize {
        self.rounds
            .unwrap_or(if self.quick { 2 } else { 3 })
            .clamp(1, 20)
    }
    pub fn live_leases(&self) -> usize {
        self.live_leases
            .unwrap_or(if self.quick { 5000 } else { 100_000 })
            .clamp(1, 100_000)
    }
}

/// Parts of a run that `--only` can name besides scenarios.
pub const PARTS: &[&str] = &["galera"];

/// Refuses any target that is not on this machine.
pub fn ensure_loopback(address: &str) -> anyhow::Result<()> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']');
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !ok {
        bail!("refusing to send load to {address}: floatlm-bench only targets loopback addresses");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if let Some(old) = &args.compare {
            return compare_only(&args, old).await;
        }
        let results = match &args.identity {
            Some(id) => scenarios::external(&args, id).await?,
            None => scenarios::full_run(&args).await?,
        };
        report::print_table(&results);
        if let Some(dir) = args.out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&args.out, serde_json::to_string_pretty(&results.to_json())?)
            .with_context(|| format!("cannot write {}", args.out.display()))?;
        println!("results: {}", args.out.display());
        if let Some(doc) = &args.doc {
            let previous = std::fs::read_to_string(doc).unwrap_or_default();
            let md = compare_report::keep_section(&report::markdown(&results), &previous);
            std::fs::write(doc, md).with_context(|| format!("cannot write {}", doc.display()))?;
            println!("rewrote {}", doc.display());
        }
        Ok(())
    })
}

/// `--compare`: the comparison alone; with --doc only its section changes.
async fn compare_only(args: &Args, old: &std::path::Path) -> anyhow::Result<()> {
    let c = compare::run(args, old).await?;
    compare_report::print(&c);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&compare_report::to_json(&c))?,
    )
    .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("results: {}", args.out.display());
    if let Some(doc) = &args.doc {
        let previous = std::fs::read_to_string(doc).with_context(|| {
            format!("cannot read {} (run scripts/bench.sh first)", doc.display())
        })?;
        std::fs::write(
            doc,
            compare_report::splice(&previous, &compare_report::markdown(&c)),
        )
        .with_context(|| format!("cannot write {}", doc.display()))?;
        println!("rewrote the comparison in {}", doc.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn only_picks_parts_and_scenarios() {
        let a = |only: &[&str]| {
            let mut argv = vec!["floatlm-bench"];
            for o in only {
                argv.extend(["--only", o]);
            }
            super::Args::parse_from(argv)
        };
        let all = a(&[]);
        assert!(all.runs_single_server() && all.runs_part("galera") && all.wants("heartbeat"));
        let galera = a(&["galera"]);
        assert!(!galera.runs_single_server());
        assert!(galera.runs_part("galera") && galera.wants("heartbeat"));
        let both = a(&["galera", "heartbeat"]);
        assert!(both.runs_single_server() && both.runs_part("galera"));
        assert!(both.wants("heartbeat") && !both.wants("checkout"));
        let one = a(&["checkout"]);
        assert!(one.runs_single_server() && !one.runs_part("galera"));
    }

    #[test]
    fn compare_flags() {
        let p = |argv: &[&str]| super::Args::try_parse_from([&["floatlm-bench"], argv].concat());
        let a = p(&["--compare", "/old/floatlm", "--compare-label", "f6f7d48"]).unwrap();
        assert_eq!(
            a.compare.as_deref(),
            Some(std::path::Path::new("/old/floatlm"))
        );
        assert_eq!(a.compare_label.as_deref(), Some("f6f7d48"));
        assert_eq!(a.rounds(), 3);
        let quick = p(&["--compare", "/old/floatlm", "--quick"]).unwrap();
        assert_eq!((quick.rounds(), quick.compare_label), (2, None));
        assert_eq!(
            p(&["--compare", "o", "--rounds", "50"]).unwrap().rounds(),
            20
        );
        assert_eq!(p(&["--compare", "o", "--rounds", "0"]).unwrap().rounds(), 1);
        // The label and rounds mean nothing without --compare, and a
        // comparison starts its own instances.
        assert!(p(&["--compare-label", "x"]).is_err());
        assert!(p(&["--rounds", "2"]).is_err());
        assert!(p(&["--compare", "o", "--identity", "a:b@127.0.0.1:1"]).is_err());
        assert!(p(&["--compare"]).is_err());
    }

    #[test]
    fn every_session_of_a_run_has_room() {
        let p = |argv: &[&str]| {
            super::Args::try_parse_from([&["floatlm-bench"], argv].concat()).unwrap()
        };
        // 100,000 live leases, 5,000 held twice (one and three instances),
        // 4 x 64 per client twice, 1,000 to spare.
        assert_eq!(
            p(&[]).max_sessions(),
            100_000 + 2 * (5_000 + 4 * 64) + 1_000
        );
        assert_eq!(
            p(&["--quick"]).max_sessions(),
            5_000 + 2 * (1_000 + 4 * 32) + 1_000
        );
        assert_eq!(p(&["--max-sessions", "50"]).max_sessions(), 50);
        assert!(super::Args::try_parse_from([
            "floatlm-bench",
            "--max-sessions",
            "5",
            "--identity",
            "a:b@127.0.0.1:1"
        ])
        .is_err());
    }

    #[test]
    fn only_loopback_targets() {
        assert!(super::ensure_loopback("127.0.0.1:8990").is_ok());
        assert!(super::ensure_loopback("localhost:1").is_ok());
        assert!(super::ensure_loopback("[::1]:8990").is_ok());
        assert!(super::ensure_loopback("10.0.0.1:8990").is_err());
        assert!(super::ensure_loopback("example.com:80").is_err());
    }
}
