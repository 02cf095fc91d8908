//! `floatlm checkout -- CMD` as a supervisor: SIGTERM, SIGINT and SIGHUP
//! reach CMD, the seat is free when checkout exits and checkout exits with
//! CMD's status; a lost seat stops CMD (or, with `--on-loss ignore`, does
//! not); a release that could not be made (the lease already ended, no
//! server, no answer in time) is reported in words that say what happened.
//! A real `floatlm serve --demo` and the real client binary.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use testkit::{wait_for, DemoServer};

/// Exit code of the test command when a trapped signal ends it.
const CMD_EXIT: i32 = 7;
/// `floatlm checkout`'s exit code when the seat was lost and CMD stopped.
const EXIT_SEAT_LOST: i32 = 4;

/// CMD: a shell script that writes its pid to `DIR/ready`, then waits; on
/// SIGTERM, SIGINT or SIGHUP it writes the signal's name to `DIR/signal`
/// and exits 7 (or, with `ignore_term`, notes SIGTERM and waits on).
fn cmd_script(dir: &Path, ignore_term: bool) -> PathBuf {
    let d = dir.display();
    let mut traps = String::new();
    for s in ["TERM", "INT", "HUP"] {
        let exit = if ignore_term && s == "TERM" {
            String::new()
        } else {
            format!("; kill $nap; exit {CMD_EXIT}")
        };
        traps.push_str(&format!("trap 'echo {s} > \"{d}/signal\"{exit}' {s}\n"));
    }
    let body = format!(
        "#!/bin/sh\nsleep 300 & nap=$!\n{traps}echo $$ > \"{d}/ready.tmp\" && mv \"{d}/ready.tmp\" \"{d}/ready\"\n\
         while kill -0 $nap 2>/dev/null; do wait $nap; done\nexit 1\n"
    );
    let path = dir.join("cmd.sh");
    std::fs::write(&path, body).unwrap();
    path
}

/// A running `floatlm checkout`, in a process group of its own (like a job
/// a supervisor started: no terminal sends it anything). Dropping it kills
/// the whole group, so nothing outlives a failed test.
struct Checkout {
    child: Child,
    dir: tempfile::TempDir,
}

impl Checkout {
    fn start(d: &DemoServer, flags: &[&str], ignore_term: bool) -> Checkout {
        let dir = tempfile::tempdir().unwrap();
        let script = cmd_script(dir.path(), ignore_term);
        let mut args = vec!["checkout", "-s", &d.identity, "demo"];
        args.extend_from_slice(flags);
        let (sh, s, p);
        if !flags.contains(&"--hold") {
            (sh, s, p) = (
                "sh",
                script.display().to_string(),
                dir.path().display().to_string(),
            );
            args.extend(["--", sh, &s, &p]);
        }
        let child = Command::new(testkit::bin())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        Checkout { child, dir }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join(name))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Waits until CMD runs; returns its pid.
    async fn cmd_ready(&mut self) -> i32 {
        wait_for("CMD to start", Duration::from_secs(30), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("checkout exited early ({status}): {}", self.stderr());
            }
            let pid = self.read("ready").and_then(|p| p.parse().ok());
            async move { pid }
        })
        .await
    }

    /// Waits until stderr says `what`.
    async fn stderr_says(&self, what: &str) -> String {
        wait_for(
            &format!("checkout to say {what:?}"),
            Duration::from_secs(20),
            || async {
                let e = self.stderr();
                e.contains(what).then_some(e)
            },
        )
        .await
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    async fn exit(&mut self, within: Duration) -> ExitStatus {
        let stderr = self.stderr();
        wait_for(
            &format!("checkout to exit (stderr so far: {stderr})"),
            within,
            || {
                let status = self.child.try_wait().unwrap();
                async move { status }
            },
        )
        .await
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

async fn one_signal_reaches_cmd(sig: i32, name: &str) {
    let d = DemoServer::start(&["--lease-ttl", "5s"]);
    let mut c = Checkout::start(&d, &[], false);
    let cmd = c.cmd_ready().await;
    assert_eq!(d.used().await, 1, "the seat is held while CMD runs");

    c.signal(sig);
    let status = c.exit(Duration::from_secs(20)).await;
    assert_eq!(d.used().await, 0, "the seat is free once checkout exits");
    assert_eq!(
        status.code(),
        Some(CMD_EXIT),
        "checkout exits with CMD's status; stderr: {}",
        c.stderr()
    );
    assert_eq!(c.read("signal").as_deref(), Some(name), "CMD got {name}");
    assert!(!alive(cmd), "CMD is gone");
    let err = c.stderr();
    assert!(
        err.contains(&format!("got SIG{name}; passing it to sh")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reaches_cmd_and_the_seat_is_released() {
    one_signal_reaches_cmd(libc::SIGTERM, "TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_reaches_cmd_and_the_seat_is_released() {
    one_signal_reaches_cmd(libc::SIGINT, "INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reaches_cmd_and_the_seat_is_released() {
    one_signal_reaches_cmd(libc::SIGHUP, "HUP").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_releases_the_seat_on_a_signal() {
    let d = DemoServer::start(&["--lease-ttl", "5s"]);
    for (sig, code) in [
        (libc::SIGTERM, 143),
        (libc::SIGINT, 130),
        (libc::SIGHUP, 129),
    ] {
        let mut c = Checkout::start(&d, &["--hold", "300"], false);
        c.stderr_says("holding a seat").await;
        assert_eq!(d.used().await, 1);
        c.signal(sig);
        let status = c.exit(Duration::from_secs(20)).await;
        assert_eq!(status.code(), Some(code), "{}", c.stderr());
        assert_eq!(d.used().await, 0, "released on signal {sig}");
    }
}

/// The lease checkout holds, as the server names it (treated as opaque).
async fn only_lease(d: &DemoServer) -> String {
    let leases = d.leases().await;
    assert_eq!(leases.len(), 1, "{leases:?}");
    leases[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_released_seat_stops_cmd_with_sigterm() {
    let d = DemoServer::start(&["--lease-ttl", "5s"]);
    let mut c = Checkout::start(&d, &[], false);
    let cmd = c.cmd_ready().await;
    d.force_release(&only_lease(&d).await).await;

    let status = c.exit(Duration::from_secs(20)).await;
    let err = c.stderr();
    assert_eq!(status.code(), Some(EXIT_SEAT_LOST), "{err}");
    assert_eq!(c.read("signal").as_deref(), Some("TERM"), "{err}");
    assert!(!alive(cmd), "CMD is gone");
    assert!(
        err.contains("lost the seat of 'demo'")
            && err.contains("released by an operator")
            && err.contains("stopping sh: SIGTERM now"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmd_ignoring_sigterm_after_a_loss_gets_sigkill() {
    let d = DemoServer::start(&["--lease-ttl", "5s"]);
    let mut c = Checkout::start(&d, &["--kill-after", "1"], true);
    let cmd = c.cmd_ready().await;
    d.force_release(&only_lease(&d).await).await;

    let status = c.exit(Duration::from_secs(20)).await;
    let err = c.stderr();
    assert_eq!(status.code(), Some(EXIT_SEAT_LOST), "{err}");
    assert_eq!(
        c.read("signal").as_deref(),
        Some("TERM"),
        "CMD saw SIGTERM first"
    );
    assert!(err.contains("sending SIGKILL"), "{err}");
    assert!(!alive(cmd), "CMD is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loss_ignore_lets_cmd_run_and_only_warns() {
    let d = DemoServer::start(&["--lease-ttl", "5s"]);
    let mut c = Checkout::start(&d, &["--on-loss", "ignore"], false);
    let cmd = c.cmd_ready().await;
    d.force_release(&only_lease(&d).await).await;

    let err = c.stderr_says("lost the seat of 'demo'").await;
    assert!(err.contains("--on-loss ignore"), "{err}");
    assert!(c.child.try_wait().unwrap().is_none(), "checkout runs on");
    assert!(alive(cmd), "CMD runs on");
    assert_eq!(c.read("signal"), None, "CMD got no signal");
    // Its status is still CMD's own.
    c.signal(libc::SIGTERM);
    let status = c.exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(CMD_EXIT), "{}", c.stderr());
    assert!(!alive(cmd));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_before_the_promise_ends_stops_cmd() {
    let mut d = DemoServer::start(&["--lease-ttl", "5s"]);
    let mut c = Checkout::start(&d, &[], false);
    let cmd = c.cmd_ready().await;
    d.proc.signal(libc::SIGKILL);
    d.proc.wait_exit(Duration::from_secs(10)).unwrap();

    // The promise is at most 5 s long; the release then finds no server.
    let status = c.exit(Duration::from_secs(30)).await;
    let err = c.stderr();
    assert_eq!(status.code(), Some(EXIT_SEAT_LOST), "{err}");
    assert_eq!(c.read("signal").as_deref(), Some("TERM"), "{err}");
    assert!(!alive(cmd), "CMD is gone");
    assert!(
        err.contains("lost the seat of 'demo'") && err.contains("no server confirmed the lease"),
        "{err}"
    );
}

/// How `floatlm checkout` reports a release that did not happen: CMD ends
/// (SIGTERM passed on) after `spoil` did something to the server, checkout
/// exits with CMD's status, and its stderr says `says`. Returns stderr and
/// how long checkout took to exit after the signal. TTL 60 s: no heartbeat
/// (every 20 s) comes between the checkout and the release, so the handle
/// has not noticed anything.
async fn release_after(
    d: &mut DemoServer,
    spoil: impl AsyncFnOnce(&mut DemoServer),
    says: &[&str],
) -> (String, Duration) {
    let mut c = Checkout::start(d, &[], false);
    c.cmd_ready().await;
    assert_eq!(d.used().await, 1, "the seat is held while CMD runs");
    spoil(d).await;
    c.signal(libc::SIGTERM);
    let t = std::time::Instant::now();
    let status = c.exit(Duration::from_secs(20)).await;
    let took = t.elapsed();
    let err = c.stderr();
    assert_eq!(
        status.code(),
        Some(CMD_EXIT),
        "checkout exits with CMD's status: {err}"
    );
    assert!(
        !err.contains("lost the seat"),
        "the handle had not noticed anything: {err}"
    );
    for s in says {
        assert!(err.contains(s), "stderr says {s:?}: {err}");
    }
    (err, took)
}

/// An operator released the lease while CMD ran: checkout's release finds
/// it ended and says so, as a note (nothing is left to give back; the seat
/// itself stays taken until the promise the holder had runs out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_finds_the_lease_ended_says_so() {
    let mut d = DemoServer::start(&[]);
    let (err, _) = release_after(
        &mut d,
        async |d: &mut DemoServer| d.force_release(&only_lease(d).await).await,
        &["note: the lease had already ended on the server (it expired, or an operator released it) \
           before checkout gave it back"],
    )
    .await;
    assert!(!err.contains("could not give the seat back"), "{err}");
}

/// The server died while CMD ran: the release finds no server, and
/// checkout says it could not give the seat back, why, and that the seat
/// frees itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_no_server_answers_says_the_seat_frees_itself() {
    let mut d = DemoServer::start(&[]);
    let addr = d.proc.licensing.clone();
    let (err, took) = release_after(
        &mut d,
        async |d: &mut DemoServer| {
            d.proc.signal(libc::SIGKILL);
            d.proc.wait_exit(Duration::from_secs(10)).unwrap();
        },
        &[
            "could not give the seat back (no license server reachable: ",
            &addr,
            "connection refused",
            "); it frees itself when its lease runs out",
        ],
    )
    .await;
    assert!(!err.contains("TLS"), "{err}");
    eprintln!(
        "server gone: checkout exited {} ms after SIGTERM",
        took.as_millis()
    );
}

/// The server hung (SIGSTOP) while CMD ran: checkout waits 5 s for the
/// release's answer, then says none came and that the seat frees itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_no_server_confirms_in_time_says_so() {
    let mut d = DemoServer::start(&[]);
    let (_, took) = release_after(
        &mut d,
        async |d: &mut DemoServer| d.proc.signal(libc::SIGSTOP),
        &["no server confirmed the release within 5 s; the seat frees itself when its lease runs out"],
    )
    .await;
    d.proc.signal(libc::SIGCONT);
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(10),
        "checkout waits 5 s for the release, then exits: {took:?}"
    );
    eprintln!(
        "server hung: checkout exited {} ms after SIGTERM",
        took.as_millis()
    );
}
