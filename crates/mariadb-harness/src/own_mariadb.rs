//! A MariaDB server of a test's own, for fault tests that kill or stall the
//! database: they break what they started, never the shared server on 3306.
//!
//! [`OwnMariaDb::start`] makes a fresh data directory in a tempdir with
//! `mariadb-install-db`, runs `mariadbd --no-defaults` on a free loopback
//! port with its own socket, pid file and error log in that tempdir, and
//! waits until root can log in over TCP without a password. The test then
//! kills (SIGKILL), stalls (SIGSTOP/SIGCONT) and restarts it at will; Drop
//! kills it and removes the directory.
//!
//! Every wait polls a condition with a deadline and panics with the server's
//! error log when the deadline passes.

use std::future::Future;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `mariadb-install-db` of a fresh directory takes well under a second here;
/// the bound is for a loaded CI machine.
const INSTALL_DEADLINE: Duration = Duration::from_secs(60);
/// From spawning `mariadbd` (including crash recovery after a SIGKILL) to a
/// successful login.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// A SIGKILLed process is gone within milliseconds; SIGSTOP/SIGCONT likewise.
const SIGNAL_DEADLINE: Duration = Duration::from_secs(10);
/// One login attempt while waiting for readiness.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a wait looks at its condition again.
const POLL: Duration = Duration::from_millis(20);
/// A port chosen as free can be taken before `mariadbd` binds it: try again.
const PORT_ATTEMPTS: usize = 5;

const HOW_TO_INSTALL: &str = "fault tests start their own MariaDB server and need its binaries \
    (mariadb-install-db and mariadbd): install them with `apt-get install -y mariadb-server` \
    (as root; scripts/test.sh does it)";

/// A MariaDB server owned by one test: its own port, data directory, socket
/// and pid file. Dropping it kills the server and removes the directory.
pub struct OwnMariaDb {
    dir: tempfile::TempDir,
    port: u16,
    mariadbd: PathBuf,
    child: Option<Child>,
    spawner: Spawner,
    /// More server options on every start (a Galera node's wsrep settings).
    extra: Vec<String>,
    /// More options on the first start only (`--wsrep-new-cluster`).
    first: Vec<String>,
}

impl OwnMariaDb {
    /// Installs a fresh data directory and starts a server on it; returns
    /// once root can log in over TCP. Panics with how to install MariaDB
    /// when its binaries are missing, or with the error log when it fails.
    pub fn start() -> OwnMariaDb {
        Self::start_with(Vec::new(), Vec::new(), None, true)
    }

    /// [`start`](Self::start) with more server options: `extra` on every
    /// start, `first` on the first one only; on `port` when given (a Galera
    /// node whose address the other nodes already know). Without
    /// `install_data` the data directory starts empty and belongs to
    /// `nobody` when run as root: a Galera joiner's, filled by rsync SST,
    /// whose daemon runs as `nobody` when started by root.
    pub fn start_with(
        extra: Vec<String>,
        first: Vec<String>,
        port: Option<u16>,
        install_data: bool,
    ) -> OwnMariaDb {
        let install_db = find_binary(&["mariadb-install-db", "mysql_install_db"]);
        let mariadbd = find_binary(&["mariadbd", "mysqld"]);
        let dir = tempfile::Builder::new()
            .prefix("own-mariadb-")
            .tempdir()
            .expect("create a tempdir for the own MariaDB server");
        let began = Instant::now();
        if install_data {
            install(&install_db, dir.path());
        } else {
            use std::os::unix::fs::PermissionsExt;
            let data = dir.path().join("data");
            std::fs::create_dir(&data).expect("create the data directory");
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("open the tempdir to the SST's rsync daemon");
            if unsafe { libc::geteuid() } == 0 {
                let nobody = unsafe { libc::getpwnam(c"nobody".as_ptr()) };
                assert!(
                    !nobody.is_null(),
                    "no user `nobody`: the rsync SST daemon runs as it under root"
                );
                let (uid, gid) = unsafe { ((*nobody).pw_uid, (*nobody).pw_gid) };
                std::os::unix::fs::chown(&data, Some(uid), Some(gid))
                    .expect("give the data directory to the SST's rsync daemon (nobody)");
            }
        }
        let installed = began.elapsed();
        let mut db = OwnMariaDb {
            dir,
            port: 0,
            mariadbd,
            child: None,
            spawner: Spawner::new(),
            extra,
            first,
        };
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            db.port = port.unwrap_or_else(free_port);
            match db.launch() {
                Ok(()) => {
                    db.first.clear();
                    eprintln!(
                        "own MariaDB on 127.0.0.1:{} (data {}): installed in {installed:?}, ready {:?} after start",
                        db.port,
                        db.data_dir().display(),
                        began.elapsed()
                    );
                    return db;
                }
                Err(Launch::PortTaken(log)) => last_error = log,
                Err(Launch::Failed(why)) => panic!("{why}"),
            }
        }
        panic!("own MariaDB could not bind a free port in {PORT_ATTEMPTS} attempts; last error log:\n{last_error}")
    }

    /// `mysql://root@127.0.0.1:PORT`: the server without a database, like
    /// `mysql_server_url()` for the shared one.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the running server, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where its tables live; removed on Drop.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The tempdir holding data, socket, pid file and logs.
    pub fn root_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's error log so far, after anything it wrote to stderr
    /// before opening that log (bad options, say).
    pub fn error_log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("mariadbd.stderr"), read("error.log"))
    }

    /// Creates a fresh database; returns its URL.
    pub fn create_database(&self) -> String {
        let name = format!(
            "floatlm_own_{:012x}",
            rand::random::<u64>() & 0xffff_ffff_ffff
        );
        let server = self.url();
        let sql = format!("CREATE DATABASE `{name}`");
        let result = on_own_runtime(async move {
            use sqlx::Connection;
            let mut conn = sqlx::MySqlConnection::connect(&server)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            sqlx::query(&sql)
                .execute(&mut conn)
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
            let _ = conn.close().await;
            Ok::<_, String>(())
        });
        if let Err(e) = result {
            panic!(
                "own MariaDB on port {}: cannot create database {name}: {e}; its error log:\n{}",
                self.port,
                self.error_log()
            );
        }
        format!("{}/{name}", self.url())
    }

    /// SIGKILL, like a crash or the OOM killer; returns once the process is
    /// gone (connections are reset, new ones refused).
    pub fn kill(&mut self) {
        if let Err(e) = self.kill_quietly() {
            panic!("{e}");
        }
    }

    /// SIGSTOP: the server keeps its port but answers nothing (a hung
    /// database). Returns once the process is stopped.
    pub fn stop(&self) {
        let pid = self.running_pid("stop");
        signal(pid, libc::SIGSTOP);
        self.wait_state(pid, "stopped", |s| s == 'T');
    }

    /// SIGCONT after [`stop`](Self::stop). Returns once the process runs.
    pub fn resume(&self) {
        let pid = self.running_pid("resume");
        signal(pid, libc::SIGCONT);
        self.wait_state(pid, "running again", |s| s != 'T');
    }

    /// Starts the server again on the same port and data directory (after
    /// [`kill`](Self::kill); a server still running is killed first) and
    /// waits until it accepts logins. Returns how long that took.
    pub fn restart(&mut self) -> Duration {
        if self.child.is_some() {
            self.kill();
        }
        let began = Instant::now();
        match self.launch() {
            Ok(()) => {
                let took = began.elapsed();
                eprintln!(
                    "own MariaDB on 127.0.0.1:{} restarted, ready in {took:?}",
                    self.port
                );
                took
            }
            Err(Launch::PortTaken(log)) => panic!(
                "own MariaDB cannot restart: port {} was taken by something else meanwhile; its error log:\n{log}",
                self.port
            ),
            Err(Launch::Failed(why)) => panic!("{why}"),
        }
    }

    /// Spawns `mariadbd` on `self.port` and waits until root can log in.
    fn launch(&mut self) -> Result<(), Launch> {
        let d = self.dir.path();
        let log_offset = self.error_log().len() as u64;
        let mut args = vec!["--no-defaults".to_string()];
        args.extend(install_and_server_options());
        args.extend([
            format!("--datadir={}", d.join("data").display()),
            format!("--socket={}", d.join("mysqld.sock").display()),
            format!("--pid-file={}", d.join("mysqld.pid").display()),
            format!("--log-error={}", d.join("error.log").display()),
            format!("--tmpdir={}", d.display()),
            format!("--port={}", self.port),
            "--bind-address=127.0.0.1".into(),
            // Two floatlm pools of 16, an auditor and the test's own connections.
            "--max-connections=200".into(),
        ]);
        args.extend(self.extra.iter().cloned());
        args.extend(self.first.iter().cloned());
        let stderr = d.join("mariadbd.stderr");
        let child = self
            .spawner
            .spawn(&self.mariadbd, args, &stderr)
            .map_err(|e| {
                Launch::Failed(format!(
                    "cannot run {}: {e}. {HOW_TO_INSTALL}",
                    self.mariadbd.display()
                ))
            })?;
        self.child = Some(child);
        let url = self.url();
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = self.error_log_from(log_offset);
                if log.contains("Bind on TCP/IP port") || log.contains("Address already in use") {
                    return Err(Launch::PortTaken(log));
                }
                return Err(Launch::Failed(format!(
                    "own MariaDB (mariadbd on port {}) exited with {status} before accepting connections; its error log:\n{log}",
                    self.port
                )));
            }
            let probe = url.clone();
            let ok = on_own_runtime(async move {
                use sqlx::Connection;
                let attempt = async {
                    let mut c = sqlx::MySqlConnection::connect(&probe).await.ok()?;
                    let one: i32 = sqlx::query_scalar("SELECT 1")
                        .fetch_one(&mut c)
                        .await
                        .ok()?;
                    let _ = c.close().await;
                    Some(one)
                };
                tokio::time::timeout(PROBE_TIMEOUT, attempt)
                    .await
                    .ok()
                    .flatten()
                    == Some(1)
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.kill_quietly();
                return Err(Launch::Failed(format!(
                    "own MariaDB on port {} did not accept a root login within {READY_DEADLINE:?}; its error log:\n{}",
                    self.port,
                    self.error_log_from(log_offset)
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    fn error_log_from(&self, offset: u64) -> String {
        let log = self.error_log();
        log.get(offset as usize..).unwrap_or(&log).to_string()
    }

    fn kill_quietly(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SIGKILL also ends a SIGSTOPped process.
        signal(child.id(), libc::SIGKILL);
        let deadline = Instant::now() + SIGNAL_DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    return Err(format!(
                        "own MariaDB (pid {}) still runs {SIGNAL_DEADLINE:?} after SIGKILL",
                        child.id()
                    ))
                }
                Err(e) => return Err(format!("waiting for own MariaDB to exit: {e}")),
            }
        }
    }

    fn running_pid(&self, what: &str) -> u32 {
        self.pid()
            .unwrap_or_else(|| panic!("own MariaDB: cannot {what}, the server is not running"))
    }

    /// Polls /proc/PID/stat until the process state satisfies `want`.
    fn wait_state(&self, pid: u32, what: &str, want: impl Fn(char) -> bool) {
        let deadline = Instant::now() + SIGNAL_DEADLINE;
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // The state follows the command name, which is in parentheses.
                    let after = s.rsplit_once(')')?.1;
                    after.trim_start().chars().next()
                });
            if state.is_some_and(&want) {
                return;
            }
            if Instant::now() > deadline {
                panic!("own MariaDB (pid {pid}) not {what} within {SIGNAL_DEADLINE:?} (state {state:?})");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for OwnMariaDb {
    fn drop(&mut self) {
        if let Err(e) = self.kill_quietly() {
            eprintln!("{e}");
        }
        // The TempDir removes data, socket, pid file and logs after this.
    }
}

enum Launch {
    /// `mariadbd` could not bind its port: pick another (at first start only).
    PortTaken(String),
    Failed(String),
}

/// Options for both the bootstrap in `mariadb-install-db` and the server:
/// small buffers for a fast start and little memory. Durability against a
/// killed *process* is kept: a commit is written to the OS at once (only an
/// OS crash could lose the last second, hence no fsync per commit).
fn install_and_server_options() -> Vec<String> {
    let mut o: Vec<String> = [
        "--skip-name-resolve",
        "--innodb-buffer-pool-size=16M",
        "--innodb-log-file-size=8M",
        "--innodb-log-buffer-size=2M",
        "--innodb-flush-log-at-trx-commit=2",
        "--innodb-doublewrite=0",
        "--innodb-buffer-pool-load-at-startup=0",
        "--innodb-buffer-pool-dump-at-shutdown=0",
        "--key-buffer-size=1M",
        "--performance-schema=0",
        "--skip-log-bin",
        "--table-open-cache=200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // mariadbd refuses to run as root unless told to; as anyone else the
    // switch only earns a warning, so leave it out.
    if unsafe { libc::geteuid() } == 0 {
        o.push("--user=root".into());
    }
    o
}

/// Runs `mariadb-install-db` into DIR/data: root logs in with no password
/// (over TCP too, `normal` authentication), no test database.
fn install(install_db: &Path, dir: &Path) {
    let log_path = dir.join("install.log");
    let log = std::fs::File::create(&log_path).expect("create install.log");
    let mut cmd = Command::new(install_db);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .args(install_and_server_options())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        // Its own group: on a timeout the bootstrap server goes with the script.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}. {HOW_TO_INSTALL}", install_db.display()));
    let deadline = Instant::now() + INSTALL_DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for mariadb-install-db") {
            break s;
        }
        if Instant::now() > deadline {
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            panic!(
                "mariadb-install-db did not finish within {INSTALL_DEADLINE:?}; its output:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL);
    };
    if !status.success() {
        let mut out = String::new();
        let _ = std::fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut out));
        panic!("mariadb-install-db failed ({status}); its output:\n{out}");
    }
}

/// The first of `names` found on PATH or in the usual sbin/bin directories
/// (tests often run with a PATH that lacks /usr/sbin, where mariadbd lives).
fn find_binary(names: &[&str]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
                .into_iter()
                .map(PathBuf::from),
        )
        .collect();
    for name in names {
        for d in &dirs {
            let p = d.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "{} not found (looked in PATH and /usr/sbin, /usr/bin, /usr/local/sbin, /usr/local/bin): {HOW_TO_INSTALL}",
        names.join(" or ")
    );
}

/// A port that is free now, below the ephemeral range: while the server is
/// down, clients keep connecting to its port from ephemeral ports, and one
/// of them landing on the port itself would connect to itself (TCP
/// simultaneous open) and keep the port from the restarted server.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low);
    if to > from + 1000 {
        for _ in 0..200 {
            let port = from + (rand::random::<u16>() % (to - from));
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn signal(pid: u32, sig: i32) {
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Runs `fut` to completion on a small runtime in a thread of its own, so
/// the harness can be called from sync tests and from async test bodies
/// alike (a runtime cannot be entered from inside another).
fn on_own_runtime<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the own MariaDB harness")
            .block_on(fut)
    })
    .join()
    .expect("own MariaDB harness thread")
}

/// Program, arguments, file for its stderr, where to send the child.
type SpawnRequest = (
    PathBuf,
    Vec<String>,
    PathBuf,
    mpsc::Sender<std::io::Result<Child>>,
);

/// Spawns the server from a thread that lives exactly as long as the
/// `OwnMariaDb`. The server asks the kernel for SIGKILL when that thread
/// ends (PR_SET_PDEATHSIG is tied to the spawning thread, not the process),
/// so a test process killed before Drop runs (a nextest timeout) leaves no
/// server behind, and no short-lived caller thread can end it by accident.
struct Spawner {
    tx: Option<mpsc::Sender<SpawnRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spawner {
    fn new() -> Spawner {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let thread = std::thread::Builder::new()
            .name("own-mariadb".into())
            .spawn(move || {
                for (program, args, stderr, reply) in rx {
                    let stderr = match std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&stderr)
                    {
                        Ok(f) => f,
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            continue;
                        }
                    };
                    let mut cmd = Command::new(program);
                    cmd.args(args)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(stderr);
                    unsafe {
                        cmd.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the own-mariadb thread");
        Spawner {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn spawn(&self, program: &Path, args: Vec<String>, stderr: &Path) -> std::io::Result<Child> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .as_ref()
            .expect("spawner open")
            .send((program.to_path_buf(), args, stderr.to_path_buf(), reply))
            .map_err(|_| std::io::Error::other("own-mariadb thread is gone"))?;
        answer
            .recv_timeout(SIGNAL_DEADLINE)
            .map_err(|_| std::io::Error::other("own-mariadb thread did not answer"))?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
