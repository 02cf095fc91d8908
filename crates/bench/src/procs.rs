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
    // Fields 14 and 15 (utime, stime) in clock ticks, after the "(comm)" field.
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    (rss, ticks as f64 / USER_HZ)
}

/// Clock ticks per second in /proc (USER_HZ, fixed at 100 by the Linux ABI).
const USER_HZ: f64 = 100.0;

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
