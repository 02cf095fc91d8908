//! A real NGINX in front of test instances, running a shipped config from
//! nginx/ with the test's upstreams, port and paths swapped in.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running NGINX; stopped (with its workers) on drop. [`Nginx::stop`] and
/// [`Nginx::start_again`] take it down and bring it back on the same port
/// with the same configuration (a proxy outage).
pub struct Nginx {
    child: Option<Child>,
    bin: &'static str,
    dir: PathBuf,
    conf: PathBuf,
    addr: String,
}

impl Nginx {
    /// `HOST:PORT` it listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether it runs (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops it as `nginx -s stop` would: SIGTERM to the master, which
    /// stops its workers and exits (SIGKILL to the master alone would leave
    /// the workers serving). Returns once the master exited and its port
    /// refuses connections (SIGKILL after 5 s; a panic if the port still
    /// accepts after 10 s). Nothing when it is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&self.addr).is_ok() {
            assert!(
                Instant::now() < deadline,
                "nginx's port {} still accepts connections 10 s after its master exited",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts it again with the same configuration on the same port, and
    /// waits until it accepts connections. Panics (with its error log) when
    /// it is already running or does not come up within 10 s.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "nginx is already running");
        self.child = Some(spawn_and_wait(self.bin, &self.dir, &self.conf, &self.addr));
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // No second panic from stop()'s checks while unwinding.
            if let Some(mut child) = self.child.take() {
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            return;
        }
        self.stop();
    }
}

fn nginx_bin() -> &'static str {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx"].into_iter().find(|p| Path::new(p).exists()).unwrap_or_else(|| {
        panic!("nginx is not installed: apt-get install -y nginx-light (scripts/test.sh installs it)")
    })
}

/// Runs `bin` with `conf` in the foreground and waits until `addr` accepts
/// connections; panics with the error log when it exits or does not come up
/// within 10 s.
fn spawn_and_wait(bin: &str, dir: &Path, conf: &Path, addr: &str) -> Child {
    let mut child = Command::new(bin)
        .args([
            "-p",
            &dir.display().to_string(),
            "-c",
            &conf.display().to_string(),
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() >= deadline {
            if exited.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!(
                "nginx did not start on {addr} (exit {exited:?}); its error log ({}):\n{}",
                dir.join("nginx-error.log").display(),
                std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What each upstream `server` line carries after its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerParams<'a> {
    /// Whatever the shipped line says (max_fails, fail_timeout).
    Shipped,
    /// These instead.
    These(&'a str),
}

/// NGINX with the shipped `policy` in front of every licensing listener of
/// `servers`, the license file `lic` applied and an identity `name` created
/// through the first instance: (NGINX, its address, the identity's
/// `ID:SECRET`).
pub fn front(
    servers: &[crate::ServerProc],
    policy: &str,
    dir: &Path,
    params: ServerParams<'_>,
    lic: &str,
    name: &str,
) -> (Nginx, String, String) {
    let upstreams: Vec<String> = servers.iter().map(|s| s.licensing.clone()).collect();
    let (nginx, proxy) = start_nginx(policy, &upstreams, dir, true, params);
    crate::admin_cli(&servers[0], &["apply", lic]);
    let cred = crate::created_credential(&crate::admin_cli(
        &servers[0],
        &["identity", "create", "--name", name],
    ));
    (nginx, proxy, cred)
}

/// Runs the shipped config `policy` (a file name in nginx/) with
/// `upstreams`; without `keepalive`, NGINX sends one request per upstream
/// connection. Returns NGINX and its address. Its error log is
/// `dir/nginx-error.log`.
pub fn start_nginx(
    policy: &str,
    upstreams: &[String],
    dir: &Path,
    keepalive: bool,
    params: ServerParams<'_>,
) -> (Nginx, String) {
    let nginx = nginx_bin();
    let shipped = std::fs::read_to_string(crate::repo_root().join("nginx").join(policy)).unwrap();
    let port = free_port();
    let mut out = String::new();
    let mut upstream_done = false;
    for line in shipped.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("server 127.0.0.1:") {
            if !upstream_done {
                let shipped_params = rest
                    .split_once(' ')
                    .map_or("", |(_, p)| p)
                    .trim_end_matches(';');
                let p = match params {
                    ServerParams::Shipped => shipped_params,
                    ServerParams::These(p) => p,
                };
                for u in upstreams {
                    out.push_str(&format!("        server {u} {p};\n"));
                }
                upstream_done = true;
            }
            continue;
        }
        if !keepalive
            && (t.starts_with("keepalive ") || t.starts_with("proxy_set_header Connection"))
        {
            continue;
        }
        let line = match t {
            l if l.starts_with("listen 8080;") => format!("        listen 127.0.0.1:{port};"),
            l if l.starts_with("pid ") => format!("pid {}/nginx.pid;", dir.display()),
            l if l.starts_with("error_log ") => {
                format!("error_log {}/nginx-error.log warn;", dir.display())
            }
            l if l.starts_with("worker_processes") => "worker_processes 1;".to_string(),
            l if l.starts_with("http {") => {
                let d = dir.display();
                format!("http {{\n    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;")
            }
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    let conf = dir.join(format!("{policy}.run.conf"));
    std::fs::write(&conf, out).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let child = spawn_and_wait(nginx, dir, &conf, &addr);
    let nginx = Nginx {
        child: Some(child),
        bin: nginx,
        dir: dir.to_path_buf(),
        conf,
        addr: addr.clone(),
    };
    (nginx, addr)
}

/// Runs the shipped TLS example (nginx/floatlm-tls.conf) on a free port of
/// 127.0.0.1, terminating TLS with `cert`/`key` (PEM) in front of
/// `upstreams`. Returns NGINX and its `HOST:PORT`. Its error log is
/// `dir/nginx-error.log`.
pub fn start_nginx_tls(
    upstreams: &[String],
    dir: &Path,
    cert: &Path,
    key: &Path,
) -> (Nginx, String) {
    let nginx = nginx_bin();
    let shipped =
        std::fs::read_to_string(crate::repo_root().join("nginx/floatlm-tls.conf")).unwrap();
    let port = free_port();
    let mut server_block = String::new();
    for line in shipped.lines() {
        let t = line.trim_start();
        let line = if t.starts_with("listen 443 ssl") {
            format!("        listen 127.0.0.1:{port} ssl;")
        } else if t.starts_with("ssl_certificate ") {
            format!("        ssl_certificate {};", cert.display())
        } else if t.starts_with("ssl_certificate_key ") {
            format!("        ssl_certificate_key {};", key.display())
        } else {
            line.to_string()
        };
        server_block.push_str(&line);
        server_block.push('\n');
    }
    let d = dir.display();
    let servers: String = upstreams
        .iter()
        .map(|u| format!("        server {u} max_fails=1 fail_timeout=2s;\n"))
        .collect();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx-tls.pid;\nerror_log {d}/nginx-error.log warn;\nevents {{ worker_connections 1024; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
         upstream floatlm {{\n{servers}        keepalive 16;\n    }}\n{server_block}}}\n"
    );
    let path = dir.join("floatlm-tls.run.conf");
    std::fs::write(&path, conf).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let child = spawn_and_wait(nginx, dir, &path, &addr);
    let nginx = Nginx {
        child: Some(child),
        bin: nginx,
        dir: dir.to_path_buf(),
        conf: path,
        addr: addr.clone(),
    };
    (nginx, addr)
}

/// A test CA and a certificate it signs for 127.0.0.1 and localhost, made
/// with the openssl CLI in `dir`: (ca.pem, server cert.pem, server key.pem).
/// `name` keeps several CAs of one test apart.
pub fn test_ca(
    dir: &Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl CLI (apt-get install -y openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |x: &std::path::PathBuf| x.display().to_string();
    let (ca_key, ca, key, csr, cert, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("key.pem"),
        p("csr.pem"),
        p("cert.pem"),
        p("ext.cnf"),
    );
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &s(&ca_key),
        "-out",
        &s(&ca),
        "-days",
        "2",
        "-subj",
        &format!("/CN=floatlm test CA {name}"),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(&ext, "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-out",
        &s(&cert),
        "-days",
        "2",
        "-extfile",
        &s(&ext),
    ]);
    (ca, cert, key)
}
