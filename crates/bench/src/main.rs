//! floatlm-bench: the load generator and benchmark harness.
//!
//! Without `--identity` it starts everything itself on loopback (a fresh
//! MariaDB database, one and then three floatlm instances, NGINX, and a
//! 3-node Galera cluster of its own with one instance per node), measures
//! the baselines (raw database transaction, NGINX proxying a trivial
//! upstream) and every scenario in the same run, and writes a table, a JSON
//! file and, with `--doc`, docs/benchmarks.md. `scripts/bench.sh` runs it.
//! With `--identity ID:SECRET@HOST:PORT` it only loads that server.

mod baseline;
mod galera;
mod load;
mod procs;
mod report;
mod scenarios;
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
    /// The short run (under two minutes): fewer clients, leases and seconds.
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
            std::fs::write(doc, report::markdown(&results))
                .with_context(|| format!("cannot write {}", doc.display()))?;
            println!("rewrote {}", doc.display());
        }
        Ok(())
    })
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
    fn only_loopback_targets() {
        assert!(super::ensure_loopback("127.0.0.1:8990").is_ok());
        assert!(super::ensure_loopback("localhost:1").is_ok());
        assert!(super::ensure_loopback("[::1]:8990").is_ok());
        assert!(super::ensure_loopback("10.0.0.1:8990").is_err());
        assert!(super::ensure_loopback("example.com:80").is_err());
    }
}
