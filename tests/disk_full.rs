//! Issue 12: the disk under an SQLite instance fills up, then frees.
//!
//! The test mounts a small tmpfs of its own (it runs as root; without root
//! or the `mount` command it fails and says so), starts a real `floatlm
//! serve` with its SQLite file on it (3 seats of one feature, lease TTL 5 s,
//! hold 10 s), lets two clients take a seat each and heartbeat twice a
//! second, then fills the tmpfs with a file for [`FULL_FOR`] and removes it.
//! What must hold:
//!
//! * healthz answers 503 within [`DETECT`] of the disk filling and for as
//!   long as it is full (writes fail), and 200 again within [`RECOVER`] of
//!   the space coming back, without a restart and with no login meanwhile
//!   (the instance notices by itself);
//! * a login while the disk is full is answered, fast, with a sealed
//!   `unavailable` error saying the license server's database is
//!   unavailable (not a timeout, not a raw SQLite error);
//! * the holders keep their seats (their heartbeats are answered from reads
//!   while their leases' recorded expiry lasts) and their leases are
//!   extended again once the disk has room;
//! * after the space returns a new login is granted within [`RECOVER`], the
//!   seat past N is refused, and the promise checker finds no instant with
//!   more promised leases than seats;
//! * the instance never logs the wedge of issue 12 ("non-zero transaction
//!   depth") and keeps running.

use floatlm_protocol::messages::{reason, ErrorCode, Response};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::promise::{Answer, Findings, RecClient, Recorder, Target};
use testkit::{admin_cli, cli_license, cluster_instance, created_credential, ServerProc};

const FEATURE: &str = "cad";
const SEATS: u32 = 3;
/// The tmpfs: room for the database and its WAL, little more.
const TMPFS_SIZE: &str = "2m";
/// How long the disk stays full: shorter than what is left of the holders'
/// hold (10 s from their login) less the half TTL at which a heartbeat must
/// write, so their heartbeats never need a write while it is full.
const FULL_FOR: Duration = Duration::from_secs(4);
/// healthz must answer 503 this soon after the disk fills (the watch probes
/// every 500 ms, with a small write).
const DETECT: Duration = Duration::from_millis(2000);
/// healthz 200 and a granted login this soon after the space returns.
const RECOVER: Duration = Duration::from_millis(2000);
/// A login while the disk is full must be answered this fast.
const FAST: Duration = Duration::from_millis(1500);
/// The whole test.
const BOUND: Duration = Duration::from_secs(50);

/// A tmpfs mounted for this test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs {
                dir: dir.to_path_buf(),
            },
            other => panic!(
                "this test fills a disk of its own: it mounts a {size} tmpfs at {} with \
                 `mount -t tmpfs -o size={size} tmpfs DIR`, which needs root (CAP_SYS_ADMIN) \
                 and the mount command (util-linux); mount said: {}",
                dir.display(),
                match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                }
            ),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server that is still being reaped must not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes `path` until the filesystem has no room left; returns the bytes
/// written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let mut total = 0u64;
    for chunk in [1 << 16, 4096, 512] {
        let buf = vec![0xa5u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(_) => break,
            }
        }
    }
    let _ = f.sync_all();
    total
}

/// One healthz answer.
struct Probe {
    sent: Instant,
    status: Result<u16, String>,
}

/// Polls healthz every 100 ms until `stop`.
fn healthz_monitor(
    addr: String,
    probes: Arc<Mutex<Vec<Probe>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let status = http
                .get(format!("http://{addr}/sentinel/ldk/v1/healthz"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string());
            probes.lock().unwrap().push(Probe { sent, status });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Heartbeats `lease` of `client` every 500 ms until `stop`; returns
/// whether every answer named it alive, and the first that did not.
fn heartbeats(
    client: Arc<RecClient>,
    at: Target,
    lease: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<usize, String>> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let r = client.heartbeat(&at, std::slice::from_ref(&lease)).await;
            if r.alive(&lease) != Some(true) {
                return Err(format!("{} -> {}", client.name, r.answer));
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(n)
    })
}

/// `expires_at` of `lease` as the admin API lists it.
async fn expiry_of(p: &ServerProc, lease: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/admin/v1/leases", p.admin))
        .bearer_auth(testkit::CLUSTER_TOKEN)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["leases"]
        .as_array()?
        .iter()
        .find(|l| l["lease"].as_str() == Some(lease))?["expires_at"]
        .as_str()?
        .parse()
        .ok()
}

/// Whether `a` is the sealed error a client must get while writes fail.
fn is_clear_unavailable(a: &Answer) -> bool {
    matches!(a, Answer::Sealed(Response::Error { code: ErrorCode::Unavailable, message, .. })
        if message.contains("database is unavailable"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_turns_healthz_503_and_heals_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), TMPFS_SIZE);
    let outcome = tokio::time::timeout(BOUND, run(dir.path(), &disk.dir)).await;
    drop(disk);
    assert!(outcome.is_ok(), "the test did not end within {BOUND:?}");
}

async fn run(d: &Path, disk: &Path) {
    let (pubkey, lic) = cli_license(d, "DISK", FEATURE, SEATS);
    let url = format!("sqlite://{}", disk.join("floatlm.db").display());
    let mut server = cluster_instance(
        d,
        url.as_str(),
        "disk-1",
        "127.0.0.1:0",
        &["--vendor-key", &pubkey],
        &[("FLOATLM_LEASE_TTL", "5s"), ("FLOATLM_LEASE_HOLD", "10s")],
    );
    admin_cli(&server, &["apply", &lic]);
    let cred = created_credential(&admin_cli(
        &server,
        &["identity", "create", "--name", "disk"],
    ));
    let at = Target::of(&server);
    let rec = Recorder::new();
    let mut f = Findings::new();
    let seats: BTreeMap<String, usize> = [(FEATURE.to_string(), SEATS as usize)].into();
    let stop = Arc::new(AtomicBool::new(false));
    let probes: Arc<Mutex<Vec<Probe>>> = Arc::default();
    let health = healthz_monitor(server.licensing.clone(), probes.clone(), stop.clone());

    // Two holders, heartbeating twice a second.
    let mut holders = Vec::new();
    for i in 1..=2 {
        let c = Arc::new(RecClient::new(&rec, &format!("holder-{i}"), &cred));
        let r = c.login(&at, FEATURE).await;
        let lease = r
            .granted()
            .unwrap_or_else(|| panic!("holder-{i} login: {}", r.answer))
            .to_string();
        holders.push((c, lease));
    }
    let mut before = Vec::new();
    for (_, lease) in &holders {
        before.push(
            expiry_of(&server, lease)
                .await
                .expect("holder's lease listed"),
        );
    }
    let beats: Vec<_> = holders
        .iter()
        .map(|(c, l)| heartbeats(c.clone(), at.clone(), l.clone(), stop.clone()))
        .collect();
    let newcomer = RecClient::new(&rec, "newcomer", &cred);
    // Its session first: the handshake is not what this test is about.
    let r = newcomer.heartbeat(&at, &[]).await;
    f.expect(
        matches!(r.answer, Answer::Sealed(Response::Heartbeat { .. })),
        format!("the newcomer's session opens: {}", r.answer),
    );

    // ---- The disk fills.
    let filler = disk.join("filler");
    let filled_at = Instant::now();
    let written = fill(&filler);
    eprintln!("disk full: wrote {written} bytes of filler");
    let full_until = filled_at + FULL_FOR;
    let mut logins = Vec::new();
    while Instant::now() < full_until {
        let r = newcomer.login(&at, FEATURE).await;
        logins.push(r);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // ---- Space returns.
    std::fs::remove_file(&filler).unwrap();
    let freed_at = Instant::now();
    // healthz first, with no login meanwhile: the instance must notice by
    // itself (its probe), not because a client's login was let through.
    let deadline = freed_at + RECOVER * 2;
    while Instant::now() < deadline
        && !probes
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.sent >= freed_at && p.status == Ok(200))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut granted = None;
    while granted.is_none() && freed_at.elapsed() < RECOVER * 3 {
        let r = newcomer.login(&at, FEATURE).await;
        if let Some(l) = r.granted() {
            granted = Some((r.received.unwrap() - freed_at, l.to_string()));
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "space back: a login was granted after {:?}",
        granted.as_ref().map(|g| g.0)
    );
    f.expect(
        granted.as_ref().is_some_and(|(t, _)| *t <= RECOVER),
        format!(
            "a login is granted within {RECOVER:?} of the space returning: after {:?}",
            granted.as_ref().map(|g| g.0)
        ),
    );
    // The seat past N is refused.
    let extra = RecClient::new(&rec, "one-too-many", &cred);
    let r = extra.login(&at, FEATURE).await;
    f.expect(
        matches!(&r.answer, Answer::Sealed(Response::Error { code: ErrorCode::NoLicense, reason: Some(why), .. })
            if why == reason::ALL_SEATS_TAKEN),
        format!("a 4th login on 3 seats is refused: {}", r.answer),
    );
    // The holders' leases are extended again (a write) once due.
    for ((_, lease), was) in holders.iter().zip(&before) {
        let deadline = Instant::now() + Duration::from_secs(6);
        let mut now = expiry_of(&server, lease).await;
        while now.is_none_or(|e| e <= *was) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            now = expiry_of(&server, lease).await;
        }
        f.expect(
            now.is_some_and(|e| e > *was),
            format!("{lease} is extended after the space returns: expiry {was} then {now:?}"),
        );
    }
    stop.store(true, Ordering::Relaxed);
    health.await.unwrap();
    for (b, (c, _)) in beats.into_iter().zip(&holders) {
        match b.await.unwrap() {
            Ok(n) => eprintln!("{}: {n} heartbeats, every one alive", c.name),
            Err(e) => f.expect(false, format!("a holder's heartbeat was not alive: {e}")),
        }
    }

    // ---- Judge healthz.
    let probes = std::mem::take(&mut *probes.lock().unwrap());
    let first_503 = probes
        .iter()
        .find(|p| p.sent >= filled_at && p.status == Ok(503))
        .map(|p| p.sent - filled_at);
    eprintln!("healthz: first 503 {first_503:?} after the disk filled");
    f.expect(
        first_503.is_some_and(|t| t <= DETECT),
        format!("healthz answers 503 within {DETECT:?} of the disk filling: first 503 after {first_503:?}"),
    );
    let not_503: Vec<String> = probes
        .iter()
        .filter(|p| p.sent >= filled_at + DETECT && p.sent < freed_at)
        .filter(|p| p.status != Ok(503))
        .map(|p| format!("{:?} at +{:?}", p.status, p.sent - filled_at))
        .collect();
    f.expect(
        not_503.is_empty(),
        format!("healthz stays 503 while the disk is full: {not_503:?}"),
    );
    let first_200 = probes
        .iter()
        .find(|p| p.sent >= freed_at && p.status == Ok(200))
        .map(|p| p.sent - freed_at);
    eprintln!("healthz: first 200 {first_200:?} after the space returned");
    f.expect(
        first_200.is_some_and(|t| t <= RECOVER),
        format!(
            "healthz answers 200 within {RECOVER:?} of the space returning: after {first_200:?}"
        ),
    );
    let not_200: Vec<String> = probes
        .iter()
        .filter(|p| p.sent >= freed_at + RECOVER)
        .filter(|p| p.status != Ok(200))
        .map(|p| format!("{:?} at +{:?}", p.status, p.sent - freed_at))
        .collect();
    f.expect(
        not_200.is_empty(),
        format!("healthz stays 200 once recovered: {not_200:?}"),
    );

    // ---- Judge the logins while full.
    f.expect(
        !logins.is_empty(),
        "logins were tried while the disk was full",
    );
    for r in &logins {
        let took = r.received.map(|t| t - r.sent);
        f.expect(
            is_clear_unavailable(&r.answer) && took.is_some_and(|t| t <= FAST),
            format!(
                "a login while the disk is full gets a sealed 'the license server's database is unavailable' within {FAST:?}: \
                 sent +{:?} after the fill, answered after {took:?}: {}",
                r.sent.saturating_duration_since(filled_at),
                r.answer
            ),
        );
    }

    // ---- Give everything back; the instance is the one that started.
    for (c, lease) in &holders {
        c.logout(&at, lease).await;
    }
    if let Some((_, lease)) = &granted {
        newcomer.logout(&at, lease).await;
    }
    let log = server.log();
    f.expect(
        !log.contains("transaction depth"),
        "the server never wedged on a stale transaction (\"non-zero transaction depth\")",
    );
    f.expect(
        server.child.try_wait().ok().flatten().is_none(),
        "the server keeps running (never restarted)",
    );
    // Shown by the test runner only when the test fails.
    let lines: Vec<&str> = log.lines().collect();
    eprintln!(
        "---- last lines of the server's log ----\n{}",
        lines[lines.len().saturating_sub(40)..].join("\n")
    );
    server.signal(libc::SIGTERM);
    server.wait_exit(Duration::from_secs(10));
    f.finish(&rec, &seats);
}
