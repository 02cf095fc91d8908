//! A real NGINX in front of test instances, running a shipped config from
//! nginx/ with the test's upstreams, port and paths swapped in.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running NGINX; stopped (with its workers) on drop.
pub struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers before it exits (SIGKILL to
        // the master alone would leave them running).
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"].into_iter().find(|p| Path::new(p).exists()).unwrap_or_else(|| {
        panic!("nginx is not installed: apt-get install -y nginx-light (scripts/test.sh installs it)")
    });
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
    let child = Command::new(nginx)
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
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start; see {}/nginx-error.log",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Nginx(child), addr)
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
    let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"].into_iter().find(|p| Path::new(p).exists()).unwrap_or_else(|| {
        panic!("nginx is not installed: apt-get install -y nginx-light (scripts/test.sh installs it)")
    });
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
    let child = Command::new(nginx)
        .args([
            "-p",
            &d.to_string(),
            "-c",
            &path.display().to_string(),
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start; see {d}/nginx-error.log"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Nginx(child), addr)
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
