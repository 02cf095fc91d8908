//! The Galera part of a run: a 3-node MariaDB Galera cluster the bench
//! starts itself on loopback (floatlm-mariadb-harness, the launcher that
//! tests/galera.rs uses too), one floatlm instance per node (each lists all
//! three nodes, its own first), NGINX in front as in the single-server part,
//! and the scenarios that write: checkout, checkout_release, heartbeat.
//! Then the same again on a fresh database with every instance listing the
//! nodes in the same order, so all of them write through node 0: what
//! sticking every grant to one writer node would gain (issue 18).
//!
//! Around each scenario it reads the certification conflicts two ways: the
//! instances' `floatlm_db_conflicts_total{cause="conflict"}` (every
//! transaction attempt that failed with a deadlock or certification error and
//! was retried) and the nodes' `wsrep_local_cert_failures` +
//! `wsrep_local_bf_aborts` (Galera's own count of local transactions that
//! lost to another node's).

use anyhow::{bail, Context};
use floatlm_mariadb_harness::galera::Galera;
use sqlx::Connection;
use std::time::Instant;

use crate::procs::{self, Instance};
use crate::scenarios::{standard_scenarios, Measured, Watch, GALERA_FEATURES};
use crate::setup::{repo_file, Setup};
use crate::Args;

/// The prefix of the Galera rows' target column (the report looks for it).
pub const TARGET: &str = "Galera: ";
/// Each instance writes through its own node.
pub const SPREAD: &str = "Galera: 3 instances on 3 nodes, NGINX";
/// Every instance writes through node 0.
pub const ONE_WRITER: &str = "Galera: 3 instances on 1 writer node, NGINX";
/// What the Galera part measures: the scenarios that write to the database.
const SCENARIOS: &[&str] = &["checkout", "checkout_release", "heartbeat"];
/// Each instance's node order: its own node first, then the others.
const ORDERS: [[usize; 3]; 3] = [[0, 1, 2], [1, 2, 0], [2, 0, 1]];
/// Every instance's node order when they all write through node 0 (the
/// others remain its failover nodes).
const ONE_WRITER_ORDERS: [[usize; 3]; 3] = [[0, 1, 2]; 3];

/// Certification conflicts counted over one scenario.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conflicts {
    /// `floatlm_db_conflicts_total{cause="conflict"}`, summed over the
    /// instances; None when a scrape failed.
    pub floatlm: Option<u64>,
    /// `wsrep_local_cert_failures + wsrep_local_bf_aborts`, summed over the
    /// nodes; None when a node did not answer.
    pub wsrep: Option<u64>,
}

impl Conflicts {
    pub fn since(&self, before: &Conflicts) -> Conflicts {
        let d = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        Conflicts {
            floatlm: d(self.floatlm, before.floatlm),
            wsrep: d(self.wsrep, before.wsrep),
        }
    }
}

/// Where the conflict counters are read.
pub struct Counters {
    http: reqwest::Client,
    /// The instances' admin listeners (`/metrics`).
    admins: Vec<String>,
    token: String,
    /// `mysql://root@host:port` of each node.
    nodes: Vec<String>,
}

impl Counters {
    pub async fn read(&self) -> Conflicts {
        let mut floatlm = Some(0);
        for a in &self.admins {
            let text = async {
                self.http
                    .get(format!("http://{a}/metrics"))
                    .bearer_auth(&self.token)
                    .send()
                    .await?
                    .error_for_status()?
                    .text()
                    .await
            }
            .await;
            floatlm = match (floatlm, text) {
                (Some(sum), Ok(t)) => Some(sum + conflicts_in_metrics(&t)),
                (_, Err(e)) => {
                    eprintln!("galera: cannot read http://{a}/metrics: {e}");
                    None
                }
                (None, _) => None,
            };
        }
        let mut wsrep = Some(0);
        for url in &self.nodes {
            let n = async {
                let mut c = sqlx::MySqlConnection::connect(url).await?;
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_cert_failures', 'wsrep_local_bf_aborts')",
                )
                .fetch_all(&mut c)
                .await?;
                let _ = c.close().await;
                Ok::<u64, sqlx::Error>(rows.iter().filter_map(|(_, v)| v.parse::<u64>().ok()).sum())
            }
            .await;
            wsrep = match (wsrep, n) {
                (Some(sum), Ok(n)) => Some(sum + n),
                (_, Err(e)) => {
                    eprintln!("galera: cannot read the wsrep status of {url}: {e}");
                    None
                }
                (None, _) => None,
            };
        }
        Conflicts { floatlm, wsrep }
    }
}

/// The sum of `floatlm_db_conflicts_total` samples whose cause is
/// `conflict` (deadlock or certification conflict), every statement kind.
fn conflicts_in_metrics(text: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.starts_with("floatlm_db_conflicts_total{") && l.contains("cause=\"conflict\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Runs `f` off the runtime's workers: the harness blocks (and panics
/// with the nodes' logs when a node does not start).
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Ok(v),
        Err(e) => {
            let why = e.try_into_panic().ok().and_then(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            });
            bail!(
                "{what} failed: {}",
                why.unwrap_or_else(|| "cancelled".into())
            )
        }
    }
}

/// Starts the cluster and three instances on it, measures the scenarios,
/// and stops everything again.
pub async fn run(args: &Args, setup: &Setup) -> anyhow::Result<Vec<Measured>> {
    println!("three instances on a 3-node Galera cluster, behind NGINX");
    let t0 = Instant::now();
    let cluster = blocking(
        "starting the 3-node Galera cluster (galera-4 and mariadb-server installed? scripts/bench.sh installs them)",
        Galera::start,
    )
    .await?;
    let (mut cluster, db) = blocking("creating the bench database on the cluster", move || {
        let db = cluster.create_database();
        (cluster, db)
    })
    .await?;
    println!(
        "galera: 3 nodes Synced, database {db} created in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    let mut result = measure(args, setup, &cluster, &db, &ORDERS, SPREAD).await;
    if let Ok(spread) = result {
        rows.extend(spread);
        // A fresh database, so the second variant starts as the first did.
        let (back, db) = blocking("creating the second bench database", move || {
            let db = cluster.create_database();
            (cluster, db)
        })
        .await?;
        println!("galera: every instance writing through node 0 (database {db})");
        result = measure(args, setup, &back, &db, &ONE_WRITER_ORDERS, ONE_WRITER).await;
        cluster = back;
    }
    // Stopping the nodes waits for each to exit.
    blocking("stopping the Galera cluster", move || drop(cluster)).await?;
    rows.extend(result?);
    Ok(rows)
}

async fn measure(
    args: &Args,
    setup: &Setup,
    cluster: &Galera,
    db: &str,
    orders: &[[usize; 3]; 3],
    target: &'static str,
) -> anyhow::Result<Vec<Measured>> {
    let urls: Vec<String> = orders.iter().map(|o| cluster.url(o, db)).collect();
    // The first instance migrates the fresh database and takes the license.
    let mut instances: Vec<Instance> = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let spec = setup.spec(args, url);
        instances.push(
            procs::start_instance(&spec, &format!("galera-{}", i + 1))
                .with_context(|| format!("floatlm on Galera node {i}"))?,
        );
    }
    let ident = setup.seed(&instances[0], &setup.lic_galera).await?;
    let upstreams: Vec<String> = instances.iter().map(|i| i.licensing.clone()).collect();
    let nginx = procs::start_nginx(
        &repo_file("nginx/floatlm-hash.conf"),
        &upstreams,
        &setup.dir,
    )?;
    let watch = Watch {
        pids: instances.iter().map(|i| i.child.id()).collect(),
        galera: Some(Counters {
            http: setup.http.clone(),
            admins: instances.iter().map(|i| i.admin.clone()).collect(),
            token: setup.token.clone(),
            nodes: (0..3)
                .map(|i| format!("mysql://root@{}", cluster.addr(i)))
                .collect(),
        }),
    };
    // A first read proves the counters answer before any figure rests on them.
    let c = watch.galera.as_ref().expect("set").read().await;
    if c.floatlm.is_none() || c.wsrep.is_none() {
        bail!("the conflict counters cannot be read (see above)");
    }
    let rows = standard_scenarios(
        args,
        &setup.http,
        &ident.at(&nginx.address),
        target,
        &watch,
        &GALERA_FEATURES,
        SCENARIOS,
    )
    .await?;
    drop(nginx);
    drop(instances);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #[test]
    fn conflicts_are_read_from_the_metrics_text() {
        let text = "# HELP floatlm_db_conflicts Transaction attempts\n\
                    # TYPE floatlm_db_conflicts counter\n\
                    floatlm_db_conflicts_total{statement=\"grant\",cause=\"conflict\"} 12\n\
                    floatlm_db_conflicts_total{statement=\"grant_batch\",cause=\"conflict\"} 30\n\
                    floatlm_db_conflicts_total{statement=\"check\",cause=\"lock_wait\"} 5\n\
                    floatlm_db_retries_total{statement=\"grant\",cause=\"conflict\"} 12\n";
        assert_eq!(super::conflicts_in_metrics(text), 42);
    }
}
