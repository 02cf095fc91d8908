//! A 3-node MariaDB Galera cluster of a test's own, on loopback.
//!
//! [`Galera::start`] starts three [`OwnMariaDb`] servers, each with its own
//! port, data directory and Galera ports (group communication, IST, SST),
//! all on 127.0.0.1: node 0 bootstraps the cluster (`--wsrep-new-cluster`),
//! nodes 1 and 2 join it by state transfer (SST by rsync) into an empty data
//! directory that the rsync daemon (run as `nobody` under root) may write. The test kills
//! (SIGKILL) and restarts nodes at will ([`Galera::node`]); a restarted node
//! rejoins by IST or SST. Failure detection is tuned down from Galera's 5 s
//! (`evs.suspect_timeout`) so a killed node leaves the primary component in
//! about 2 s; docs/operations.md says the same for production.
//!
//! Every wait polls a condition with a deadline and panics with the nodes'
//! error logs when it passes.

use std::time::{Duration, Instant};

use crate::own_mariadb::{free_port, OwnMariaDb};

const PROVIDER: &str = "/usr/lib/galera/libgalera_smm.so";
/// From a node's start (or restart) to Synced.
const SYNC_DEADLINE: Duration = Duration::from_secs(60);

pub struct Galera {
    nodes: Vec<OwnMariaDb>,
}

impl Galera {
    /// Starts a 3-node cluster; returns once every node is Synced and the
    /// cluster has three members.
    pub fn start() -> Galera {
        assert!(
            std::path::Path::new(PROVIDER).is_file(),
            "{PROVIDER} is missing: install the Galera library with `apt-get install -y galera-4` (scripts/ensure.sh does it)"
        );
        let ports: Vec<(u16, u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port(), free_port()))
            .collect();
        let gcomm = ports
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.1))
            .collect::<Vec<_>>()
            .join(",");
        let mut g = Galera { nodes: Vec::new() };
        for (i, (sql, group, ist, sst)) in ports.iter().enumerate() {
            let extra = vec![
                "--wsrep-on=ON".to_string(),
                format!("--wsrep-provider={PROVIDER}"),
                "--wsrep-cluster-name=floatlm_test".into(),
                format!("--wsrep-cluster-address=gcomm://{gcomm}"),
                format!("--wsrep-node-name=node{i}"),
                format!("--wsrep-node-address=127.0.0.1:{group}"),
                format!("--wsrep-node-incoming-address=127.0.0.1:{sql}"),
                format!("--wsrep-sst-receive-address=127.0.0.1:{sst}"),
                "--wsrep-sst-method=rsync".into(),
                format!(
                    "--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{group};ist.recv_addr=127.0.0.1:{ist};\
                     gcache.size=32M;evs.keepalive_period=PT0.5S;evs.suspect_timeout=PT2S;\
                     evs.inactive_timeout=PT3S;evs.inactive_check_period=PT0.5S;evs.install_timeout=PT3S;\
                     pc.wait_prim_timeout=PT20S"
                ),
                "--binlog-format=ROW".into(),
                "--default-storage-engine=InnoDB".into(),
                "--innodb-autoinc-lock-mode=2".into(),
            ];
            let first = if i == 0 {
                vec!["--wsrep-new-cluster".to_string()]
            } else {
                Vec::new()
            };
            g.nodes
                .push(OwnMariaDb::start_with(extra, first, Some(*sql), i == 0));
            g.wait_synced(i, 1 + i as i64);
        }
        g
    }

    /// Starts node `i` again after a kill; it rejoins by state transfer
    /// (after a SIGKILL its position is unknown, so a full SST by rsync,
    /// whose daemon runs as `nobody` under root and must own the data).
    /// Returns once it accepts logins; [`wait_synced`](Self::wait_synced)
    /// tells when it is Synced.
    pub fn restart(&mut self, i: usize) {
        if unsafe { libc::geteuid() } == 0 {
            let data = self.nodes[i].data_dir();
            let out = std::process::Command::new("chown")
                .args(["-R", "nobody:", &data.display().to_string()])
                .output()
                .expect("run chown");
            assert!(
                out.status.success(),
                "chown -R nobody {}: {}",
                data.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.nodes[i].restart();
    }

    pub fn node(&mut self, i: usize) -> &mut OwnMariaDb {
        &mut self.nodes[i]
    }

    /// `host:port` of node `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].port())
    }

    /// Creates a database (through node 0; it replicates); returns its name.
    pub fn create_database(&self) -> String {
        let url = self.nodes[0].create_database();
        url.rsplit('/').next().unwrap_or_default().to_string()
    }

    /// `mysql://root@NODES/db`, nodes in the order given.
    pub fn url(&self, order: &[usize], db: &str) -> String {
        let hosts: Vec<String> = order.iter().map(|i| self.addr(*i)).collect();
        format!("mysql://root@{}/{db}", hosts.join(","))
    }

    /// Every node's error log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- galera node {i} ---\n{}", tail(&n.error_log(), 4000)))
            .collect()
    }

    /// (wsrep_local_state, wsrep_cluster_size) of node `i`, None when it
    /// does not answer.
    pub fn state(&self, i: usize) -> Option<(i64, i64)> {
        let url = self.nodes[i].url();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?
                .block_on(async move {
                    use sqlx::Connection;
                    let q = async {
                        let mut c = sqlx::MySqlConnection::connect(&url).await.ok()?;
                        let rows: Vec<(String, String)> = sqlx::query_as(
                            "SHOW STATUS WHERE Variable_name IN ('wsrep_local_state', 'wsrep_cluster_size')",
                        )
                        .fetch_all(&mut c)
                        .await
                        .ok()?;
                        let _ = c.close().await;
                        let get = |n: &str| {
                            rows.iter()
                                .find(|(k, _)| k == n)
                                .and_then(|(_, v)| v.parse::<i64>().ok())
                        };
                        Some((get("wsrep_local_state")?, get("wsrep_cluster_size")?))
                    };
                    tokio::time::timeout(Duration::from_secs(2), q).await.ok()?
                })
        })
        .join()
        .ok()?
    }

    /// Waits until node `i` is Synced (4) in a cluster of `size` nodes.
    pub fn wait_synced(&self, i: usize, size: i64) -> Duration {
        let began = Instant::now();
        let mut last = None;
        while began.elapsed() < SYNC_DEADLINE {
            last = self.state(i);
            if last == Some((4, size)) {
                return began.elapsed();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "galera node {i} not Synced in a cluster of {size} within {SYNC_DEADLINE:?} (last state, size: {last:?}); logs:\n{}",
            self.logs()
        );
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut from = s.len().saturating_sub(n);
    while !s.is_char_boundary(from) {
        from += 1;
    }
    &s[from..]
}
