//! The no-regression comparison (`--compare OLD_BINARY`): the single-instance
//! scenarios on MariaDB, run alternately against an older floatlm binary and
//! the one under test, round after round in one session, so the noise of a
//! shared machine hits every variant alike. Every run starts on a fresh
//! database with licenses its own binary made ([`Setup`]). The binary under
//! test is run twice per round: as shipped, and with the usage trigger
//! dropped (`usage_on_slots` writes a usage row per seat event, a feature
//! the older binary does not have), so the structural comparison is like for
//! like.

use anyhow::bail;
use std::path::{Path, PathBuf};

use crate::baseline::TempDb;
use crate::procs;
use crate::scenarios::{self, Measured, Watch, BENCH_FEATURES, STANDARD};
use crate::setup::{self, Setup};
use crate::{Args, PARTS};

/// One binary, run one way.
#[derive(Debug, Clone)]
pub(crate) struct Variant {
    pub label: String,
    pub bin: PathBuf,
    /// What `floatlm --version` said.
    pub version: String,
    /// false: `DROP TRIGGER usage_on_slots` right after the instance started.
    pub usage_trigger: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Comparison {
    pub command: String,
    /// The scenarios compared: those of [`STANDARD`] that `--only` asks for.
    pub scenarios: Vec<&'static str>,
    pub rounds: usize,
    pub seconds: f64,
    pub clients: usize,
    pub leases: usize,
    pub machine: Vec<(String, String)>,
    /// /proc/loadavg before and after the comparison (a shared machine).
    pub load: (String, String),
    /// The older binary, this one, this one without the usage trigger.
    pub variants: Vec<Variant>,
    /// The order the variants ran in, per round (indices into `variants`).
    pub order: Vec<Vec<usize>>,
    /// runs[variant][round]: what that run measured, per scenario.
    pub runs: Vec<Vec<Vec<Measured>>>,
}

impl Comparison {
    /// Every round's figure `f` of `scenario` for variant `v`.
    pub fn values(
        &self,
        v: usize,
        scenario: &str,
        f: impl Fn(&Measured) -> Option<f64>,
    ) -> Vec<f64> {
        self.runs[v]
            .iter()
            .filter_map(|round| round.iter().find(|m| m.scenario == scenario))
            .filter_map(f)
            .collect()
    }
}

/// The median of `v` (the mean of the middle two for an even count).
pub(crate) fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Variants 0, 1, 2 in that order, then in reverse, and so on: each variant
/// is as often early as late in a round.
pub(crate) fn round_order(round: usize, variants: usize) -> Vec<usize> {
    let mut o: Vec<usize> = (0..variants).collect();
    if round % 2 == 1 {
        o.reverse();
    }
    o
}

/// The scenarios `--compare` measures, or why it cannot run as asked.
pub(crate) fn scenarios_of(args: &Args) -> anyhow::Result<Vec<&'static str>> {
    if let Some(part) = args.only.iter().find(|s| PARTS.contains(&s.as_str())) {
        bail!("--compare measures one instance on --mysql; --only {part} is a part of the full run (leave it out)");
    }
    let s: Vec<&'static str> = STANDARD.iter().copied().filter(|s| args.wants(s)).collect();
    if s.is_empty() {
        bail!(
            "--compare measures {}; --only names none of them",
            STANDARD.join(", ")
        );
    }
    Ok(s)
}

fn version(bin: &Path) -> anyhow::Result<String> {
    Ok(setup::run(bin, &["--version"])?.trim().to_string())
}

pub(crate) async fn run(args: &Args, old: &Path) -> anyhow::Result<Comparison> {
    let scenarios = scenarios_of(args)?;
    for bin in [old, args.floatlm.as_path()] {
        if !bin.exists() {
            bail!(
                "{} does not exist: build it with cargo build --release (scripts/bench-compare.sh builds both)",
                bin.display()
            );
        }
    }
    let new_version = version(&args.floatlm)?;
    let variants = vec![
        Variant {
            label: args
                .compare_label
                .clone()
                .unwrap_or_else(|| "old".to_string()),
            bin: old.to_path_buf(),
            version: version(old)?,
            usage_trigger: true,
        },
        Variant {
            label: "new".into(),
            bin: args.floatlm.clone(),
            version: new_version.clone(),
            usage_trigger: true,
        },
        Variant {
            label: "new, no usage trigger".into(),
            bin: args.floatlm.clone(),
            version: new_version,
            usage_trigger: false,
        },
    ];
    let rounds = args.rounds();
    let load_before = loadavg();
    let dir = args.keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("floatlm-compare-{:08x}", rand::random::<u32>()))
    });
    std::fs::create_dir_all(&dir)?;
    let http = scenarios::http_client(args.clients())?;
    let mut runs: Vec<Vec<Vec<Measured>>> = vec![Vec::new(); variants.len()];
    let mut order = Vec::new();
    for round in 0..rounds {
        let o = round_order(round, variants.len());
        for &v in &o {
            let var = &variants[v];
            println!("round {} of {rounds}: {}", round + 1, var.label);
            let run_dir = dir.join(format!("r{round}-v{v}"));
            std::fs::create_dir_all(&run_dir)?;
            let setup = Setup::new(&var.bin, run_dir, http.clone())?;
            runs[v].push(one_run(args, &setup, var, &scenarios).await?);
        }
        order.push(o);
    }
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(Comparison {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        scenarios,
        rounds,
        seconds: args.seconds().as_secs_f64(),
        clients: args.clients(),
        leases: args.leases(),
        machine: scenarios::machine(Some(&args.mysql)).await,
        load: (load_before, loadavg()),
        variants,
        order,
        runs,
    })
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg has them.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// One variant once: a fresh database, one instance of its binary.
async fn one_run(
    args: &Args,
    setup: &Setup,
    var: &Variant,
    which: &[&str],
) -> anyhow::Result<Vec<Measured>> {
    let db = TempDb::create(&args.mysql, "floatlm_compare").await?;
    let result = async {
        let inst = procs::start_instance(&setup.spec(args, &db.url), "bench-1")?;
        let ident = setup.seed(&inst, &setup.lic).await?;
        if !var.usage_trigger {
            db.execute("DROP TRIGGER usage_on_slots").await?;
        }
        let rows = scenarios::standard_scenarios(
            args,
            &setup.http,
            &ident.at(&inst.licensing),
            &var.label,
            &Watch::pids(&[inst.child.id()]),
            &BENCH_FEATURES,
            which,
        )
        .await?;
        drop(inst);
        anyhow::Ok(rows)
    }
    .await;
    db.drop_now().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn rounds_alternate_the_order() {
        assert_eq!(round_order(0, 3), vec![0, 1, 2]);
        assert_eq!(round_order(1, 3), vec![2, 1, 0]);
        assert_eq!(round_order(2, 3), vec![0, 1, 2]);
    }

    #[test]
    fn only_picks_the_compared_scenarios() {
        let a = |only: &[&str]| {
            let mut argv = vec!["floatlm-bench", "--compare", "/old/floatlm"];
            for o in only {
                argv.extend(["--only", o]);
            }
            Args::parse_from(argv)
        };
        assert_eq!(scenarios_of(&a(&[])).unwrap(), STANDARD);
        assert_eq!(
            scenarios_of(&a(&["heartbeat", "query"])).unwrap(),
            ["query", "heartbeat"]
        );
        assert!(scenarios_of(&a(&["galera"])).is_err());
        assert!(scenarios_of(&a(&["db_transaction"])).is_err());
    }
}
