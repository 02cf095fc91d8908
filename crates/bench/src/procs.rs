//! The processes a benchmark run starts: floatlm instances, NGINX and a
//! trivial upstream for NGINX's own ceiling. Everything listens on loopback.

use anyhow::{anyhow, bail, Context};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `floatlm serve`.
pub struct Instance {
    pub child: Child,
    pub licensing: String,
    pub admin: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a floatlm instance of the benchmark needs.
pub struct InstanceSpec<'a> {
    pub bin: &'a Path,
    pub dir: &'a Path,
    pub database_url: &'a str,
    pub master_key: &'a str,
    pub admin_token: &'a str,
    pub vendor_pub: &'a Path,
    pub lease_ttl: &'a str,
    pub lease_hold: &'a str,
    pub log_level: &'a str,
    /// `max_sessions` of each instance.
    pub max_sessions: usize,
}

pub fn start_instance(spec: &InstanceSpec<'_>, id: &str) -> anyhow::Result<Instance> {
    let data = spec.dir.join(id);
    let log = spec.dir.join(format!("{id}.log"));
    let mut child = Command::new(spec.bin)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--instance-id", id, "--lease-ttl", spec.lease_ttl])
        .args(["--lease-hold", spec.lease_hold])
        .arg("--data-dir")
        .arg(&data)
        .arg("--vendor-key")
        .arg(spec.vendor_pub)
        .args(["--drain-delay", "0s", "--log-level", spec.log_level])
        .env("FLOATLM_DATABASE_URL", spec.database_url)
        .env("FLOATLM_MASTER_KEY", spec.master_key)
        .env("FLOATLM_ADMIN_TOKEN", spec.admin_token)
        .env("FLOATLM_MAX_CONNECTIONS", "32")
        .env("FLOATLM_MAX_SESSIONS", spec.max_sessions.to_string())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("cannot start {}", spec.bin.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(" listening licensing=") {
                let _ = tx.send(line);
            }
        }
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        bail!(
            "instance {id} did not start; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_default()
            .to_string()
    };
    Ok(Instance {
        licensing: field("licensing="),
        admin: field("admin="),
        child,
    })
}

/// Resident memory (bytes) and CPU time (seconds) of a process, from /proc.
pub fn proc_usage(pid: u32) -> (u64, f64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    (rss, comm_and_cpu(pid).map_or(0.0, |(_, secs)| secs))
}

/// Clock ticks per second in /proc (USER_HZ, fixed at 100 by the Linux ABI).
const USER_HZ: f64 = 100.0;

/// The machine's CPU time, in seconds, by who spent it: the floatlm
/// instances watched, the database servers (mariadbd, mysqld), NGINX, this
/// load generator (with the trivial upstream it serves in-process), the
/// rest that was busy (other processes, interrupts and the kernel's
/// network work not charged to a process), and idle. Differences of two
/// samples over a scenario's wall time are cores.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSplit {
    pub floatlm: f64,
    pub database: f64,
    pub nginx: f64,
    pub load: f64,
    pub other: f64,
    pub idle: f64,
}

impl CpuSplit {
    /// Now, with `instances` counted as floatlm.
    pub fn sample(instances: &[u32]) -> CpuSplit {
        let mut split = CpuSplit::default();
        let me = std::process::id();
        let pids = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
        let mut charged = 0.0;
        for pid in pids {
            let Some((comm, secs)) = comm_and_cpu(pid) else {
                continue;
            };
            let group = if instances.contains(&pid) {
                &mut split.floatlm
            } else if pid == me {
                &mut split.load
            } else if comm == "nginx" {
                &mut split.nginx
            } else if comm == "mariadbd" || comm == "mysqld" {
                &mut split.database
            } else {
                continue;
            };
            *group += secs;
            charged += secs;
        }
        let (busy, idle) = machine_cpu();
        split.other = busy - charged;
        split.idle = idle;
        split
    }

    /// What was spent between `before` and `self`, over `wall` seconds: cores.
    pub fn cores_since(&self, before: &CpuSplit, wall: f64) -> CpuSplit {
        let w = wall.max(1e-9);
        let d = |a: f64, b: f64| ((a - b) / w).max(0.0);
        CpuSplit {
            floatlm: d(self.floatlm, before.floatlm),
            database: d(self.database, before.database),
            nginx: d(self.nginx, before.nginx),
            load: d(self.load, before.load),
            other: d(self.other, before.other),
            idle: d(self.idle, before.idle),
        }
    }
}

/// A process's command name and its user + system CPU seconds so far
/// (fields 14 and 15 of /proc/PID/stat, in clock ticks, after "(comm)").
fn comm_and_cpu(pid: u32) -> Option<(String, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (s.find('(')?, s.rfind(')')?);
    let comm = s.get(open + 1..close)?.to_string();
    let f: Vec<&str> = s.get(close + 2..)?.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((comm, ticks as f64 / USER_HZ))
}

/// The whole machine's busy and idle CPU seconds so far (/proc/stat).
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let at = |i: usize| f.get(i).copied().unwrap_or(0) as f64 / USER_HZ;
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    (busy, at(3) + at(4))
}

/// A port free right now on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub fn nginx_binary() -> anyhow::Result<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("nginx is not installed: apt-get install -y nginx-light"))
}

/// A running NGINX with the shipped consistent-hash configuration.
pub struct Nginx {
    child: Child,
    pub address: String,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop_nginx(&mut self.child);
    }
}

/// SIGTERM first, so the master takes its workers down with it (SIGKILL
/// to the master alone would leave them running), then SIGKILL if needed.
pub fn stop_nginx(child: &mut Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts NGINX in the foreground with `nginx/floatlm-hash.conf`, its
/// upstream list replaced by `upstreams` and its paths moved into `dir`.
pub fn start_nginx(shipped: &Path, upstreams: &[String], dir: &Path) -> anyhow::Result<Nginx> {
    let text = std::fs::read_to_string(shipped)
        .with_context(|| format!("cannot read {}", shipped.display()))?;
    let port = free_port();
    let mut out = String::new();
    let mut upstream_done = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("server 127.0.0.1:") {
            if !upstream_done {
                for u in upstreams {
                    out.push_str(&format!(
                        "        server {u} max_fails=1 fail_timeout=5s;\n"
                    ));
                }
                upstream_done = true;
            }
            continue;
        }
        if t.starts_with("pid ") || t.starts_with("error_log ") {
            continue;
        }
        if t.starts_with("listen 8080") {
            out.push_str(&format!("        listen 127.0.0.1:{port};\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    let conf = dir.join(format!("nginx-{port}.conf"));
    std::fs::write(&conf, out)?;
    let child = Command::new(nginx_binary()?)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join(format!("nginx-{port}.err")))
        .arg("-g")
        .arg(format!(
            "daemon off; pid {}/nginx-{port}.pid;",
            dir.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let address = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(&address).is_ok() {
            return Ok(Nginx { child, address });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nginx did not start listening on {address}");
}

/// A trivial upstream: answers every POST with 80 bytes, as fast as axum can.
pub async fn trivial_upstream() -> anyhow::Result<String> {
    use axum::routing::{get, post};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    let app = axum::Router::new()
        .route("/sentinel/ldk/v1/request", post(|| async { vec![7u8; 80] }))
        .route("/sentinel/ldk/v1/healthz", get(|| async { "ok" }));
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok(addr)
}
