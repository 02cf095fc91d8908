//! Issue 11, an instance whose own clock steps: checked on promises
//! (crates/testkit/src/promise.rs).
//!
//! Two instances share one MariaDB database with a 2-seat feature; one of
//! them runs under libfaketime, its offset read at run time from a file
//! (`FAKETIME_TIMESTAMP_FILE` with `FAKETIME_NO_CACHE=1`), and a stepper moves
//! that offset backwards and forwards by several seconds (0, -7, +5, -4, +9,
//! -9, +3, 0: steps of 3 to 18 s) while clients log in, heartbeat and log
//! out through both instances, two requests in three through the stepping
//! one, and one client vanishes without a logout. floatlm takes every
//! deadline of a lease from the database clock, so the promise must hold.
//!
//! Two variants:
//!
//! * Wall clock only (`FAKETIME_DONT_FAKE_MONOTONIC=1`): what an NTP step or
//!   an operator's `date -s` does to a host; CLOCK_MONOTONIC never steps on
//!   a real host. Every request must be answered as if nothing happened:
//!   held leases `alive: true`, logins granted or refused for want of a
//!   seat, logouts `released: true`.
//! * Wall and monotonic clocks both stepping: no real host does this (a
//!   monotonic clock that goes backwards breaks the contract of
//!   `std::time::Instant`). tokio keeps its timer wheel at the latest time it
//!   has seen, so after a backward step every new timer (the pool's acquire
//!   timeout, the database probe's timeout) fires at once until the clock
//!   has caught up: the instance answers "the database is unavailable" for
//!   about as long as the step. Safety must still hold, a held lease must
//!   never be answered `alive: false`, and the instance must serve again
//!   once its clock is past every time it has seen.
//!
//! Every step is confirmed through the instance itself: its log lines carry
//! its own clock, and every admin request logs one (an identity created, or
//! the request's failure), so the lines a probe request adds show the
//! instance's offset, with or without the database.

use floatlm_protocol::messages::{ErrorCode, Response};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::promise::{
    Answer, Findings, InstanceSpec, PromiseCluster, RecClient, Recorder, Target,
};
use testkit::{ServerProc, CLUSTER_TOKEN};

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
const FEATURE: &str = "cad";
const SEATS: u32 = 2;
/// One test from start to end, cluster start included.
const TEST_DEADLINE: Duration = Duration::from_secs(60);
/// The stepping instance's offsets from the real clock, in seconds, one
/// after another, each held for [`STEP_EVERY`].
const OFFSETS: [i64; 8] = [0, -7, 5, -4, 9, -9, 3, 0];
const STEP_EVERY: Duration = Duration::from_millis(2500);
/// A measured offset may differ from the one written by scheduling noise;
/// the steps are several seconds.
const OFFSET_SLACK: f64 = 1.0;
/// Clients hold a lease for this many heartbeats, one every [`BEAT`] (the
/// client library's cadence is a third of the 5 s TTL).
const BEATS: usize = 4;
const BEAT: Duration = Duration::from_millis(900);
/// A refused client tries again after this long.
const RETRY: Duration = Duration::from_millis(300);
/// With the monotonic clock stepped, how long the instance may take to
/// serve again after the last step: its clock must pass the latest time it
/// saw (+9 s at 10 s, so about 1.5 s after the offset returns to 0).
const RECOVERY: Duration = Duration::from_secs(12);

/// Both instances: 5 s leases held 10 s, the smallest floatlm accepts.
const INSTANCES: [InstanceSpec; 2] = [
    InstanceSpec::new("plain", "5s", "10s"),
    InstanceSpec::new("stepping", "5s", "10s"),
];

/// Runs a test body with [`TEST_DEADLINE`].
async fn bounded(body: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_DEADLINE, body).await.is_err() {
        panic!("the test did not finish within {TEST_DEADLINE:?}");
    }
}

// ------------------------------------------------------ the stepping clock

/// A libfaketime offset in a file the preloaded library reads on every
/// clock call (`FAKETIME_NO_CACHE=1`), so writing the file steps the clock
/// of a running process. `FAKETIME` itself must stay unset: it would win
/// over the file.
struct SteppingClock {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

impl SteppingClock {
    fn new() -> SteppingClock {
        assert!(
            Path::new(FAKETIME).exists(),
            "libfaketime is not installed: apt-get install -y faketime (scripts/test.sh installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let clock = SteppingClock {
            file: dir.path().join("faketime.rc"),
            _dir: dir,
        };
        clock.set(0);
        clock
    }

    /// The environment of a process on this clock; `monotonic`: step
    /// CLOCK_MONOTONIC too.
    fn env(&self, monotonic: bool) -> Vec<(String, String)> {
        let mut env = vec![
            ("LD_PRELOAD".to_string(), FAKETIME.to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".to_string(),
                self.file.display().to_string(),
            ),
            ("FAKETIME_NO_CACHE".to_string(), "1".to_string()),
        ];
        if !monotonic {
            env.push(("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()));
        }
        env
    }

    /// Sets the offset from the real clock. Written aside and renamed, so
    /// the library never reads half a file.
    fn set(&self, offset_s: i64) {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset_s:+}\n")).unwrap();
        std::fs::rename(&tmp, &self.file).unwrap();
    }
}

/// libfaketime keeps a shared-memory segment and a semaphore in /dev/shm
/// named after the pid, and removes them only when the process exits
/// normally; a stale pair makes the next process that gets the same pid
/// fail to start under libfaketime. Dropped after the cluster (declare it
/// first), it removes what the instances it names left.
#[derive(Default)]
struct FaketimeLeftovers(Vec<u32>);

impl Drop for FaketimeLeftovers {
    fn drop(&mut self) {
        for pid in &self.0 {
            for leftover in [
                format!("/dev/shm/faketime_shm_{pid}"),
                format!("/dev/shm/sem.faketime_sem_{pid}"),
            ] {
                if std::fs::remove_file(&leftover).is_ok() {
                    eprintln!("removed libfaketime's leftover {leftover}");
                }
            }
        }
    }
}

/// Stops an instance with SIGTERM, so that libfaketime cleans up after
/// itself (a SIGKILL, as `ServerProc`'s Drop sends, leaves its files).
fn stop_gently(p: &mut ServerProc) {
    p.signal(libc::SIGTERM);
    if p.wait_exit(Duration::from_secs(10)).is_none() {
        eprintln!(
            "instance {} ignored SIGTERM for 10 s; killing it",
            p.instance
        );
    }
}

/// The instance's clock minus the real one, in seconds. floatlm stamps rows
/// with the database clock, so the instance's own clock shows only in its
/// log. Every admin request logs a line (an identity created, or why the
/// request failed), and the lines added to the log while the probe request
/// was out were written, by the instance's clock, at a real time in that
/// window.
async fn instance_offset(p: &ServerProc, at: &Target) -> Result<f64, String> {
    let admin = at.admin.as_deref().expect("an admin address");
    let from = std::fs::metadata(&p.stderr_log).map_or(0, |m| m.len());
    let before = chrono::Utc::now();
    let answer = reqwest::Client::new()
        .post(format!("http://{admin}/admin/v1/identities"))
        .bearer_auth(CLUSTER_TOKEN)
        .json(&serde_json::json!({ "name": "clock-probe" }))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    let after = chrono::Utc::now();
    answer.map_err(|e| format!("the probe was not answered: {e}"))?;
    let mut added = Vec::new();
    let mut log = std::fs::File::open(&p.stderr_log).map_err(|e| e.to_string())?;
    log.seek(SeekFrom::Start(from)).map_err(|e| e.to_string())?;
    log.read_to_end(&mut added).map_err(|e| e.to_string())?;
    let added = strip_ansi(&String::from_utf8_lossy(&added));
    let stamped: chrono::DateTime<chrono::Utc> = added
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .next_back()
        .ok_or_else(|| format!("the probe added no log line with a time: {added:?}"))?;
    let mid = before + (after - before) / 2;
    Ok((stamped - mid).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6)
}

/// The text of a log written with ANSI colours.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters, up to the final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------- clients

/// Whether an answer is a refusal for want of a free seat.
fn no_seat(answer: &Answer) -> bool {
    matches!(
        answer,
        Answer::Sealed(Response::Error {
            code: ErrorCode::NoLicense,
            ..
        })
    )
}

/// Whether an answer says the instance cannot reach its database.
fn unavailable(answer: &Answer) -> bool {
    matches!(
        answer,
        Answer::Sealed(Response::Error {
            code: ErrorCode::Unavailable,
            ..
        })
    )
}

/// What one client saw.
#[derive(Default)]
struct Outcome {
    /// Broken expectations, one line each.
    broken: Vec<String>,
    /// Answers "the database is unavailable" (tolerated only when the
    /// monotonic clock steps too).
    unavailable: usize,
}

/// A well-behaved client until `end`: logs in, heartbeats [`BEATS`] times
/// and logs out, again and again, through the instances in turn (two
/// requests in three through the stepping one). A held lease must never be
/// answered `alive: false`, a login must be granted or refused for want of
/// a seat, a logout must be answered `released: true`; "unavailable" is
/// counted, and broken unless `tolerate_unavailable`.
async fn client_loop(
    c: RecClient,
    plain: Target,
    stepping: Target,
    end: Instant,
    tolerate_unavailable: bool,
) -> Outcome {
    let t0 = Instant::now();
    let mut out = Outcome::default();
    let mut k = c.name.len();
    let mut via = || {
        k += 1;
        if k % 3 == 0 {
            plain.clone()
        } else {
            stepping.clone()
        }
    };
    // Counts an "unavailable" answer; true when it is not tolerated.
    let refused = |out: &mut Outcome, a: &Answer| {
        if unavailable(a) {
            out.unavailable += 1;
            !tolerate_unavailable
        } else {
            true
        }
    };
    while Instant::now() < end {
        let g = c.login(&via(), FEATURE).await;
        let Some(lease) = g.granted().map(String::from) else {
            if !no_seat(&g.answer) && refused(&mut out, &g.answer) {
                out.broken.push(format!(
                    "a login must be granted or refused for want of a seat: {}",
                    g.line(t0)
                ));
            }
            tokio::time::sleep(RETRY).await;
            continue;
        };
        for _ in 0..BEATS {
            tokio::time::sleep(BEAT).await;
            let h = c.heartbeat(&via(), std::slice::from_ref(&lease)).await;
            match h.alive(&lease) {
                Some(true) => {}
                None if !refused(&mut out, &h.answer) => {}
                _ => {
                    out.broken.push(format!(
                        "{} holds {lease} and heartbeats on time: it must be answered alive: {}",
                        c.name,
                        h.line(t0)
                    ));
                    break;
                }
            }
        }
        let r = c.logout(&via(), &lease).await;
        if r.released() != Some(true) && refused(&mut out, &r.answer) {
            out.broken.push(format!(
                "{}'s logout of its live lease: {}",
                c.name,
                r.line(t0)
            ));
        }
    }
    out
}

// -------------------------------------------------------------------- tests

async fn promises_hold_while_an_instance_clock_steps(fake_monotonic: bool) {
    let clock = SteppingClock::new();
    let env = clock.env(fake_monotonic);
    let mut leftovers = FaketimeLeftovers::default();
    let mut cl = PromiseCluster::start_with_env(
        &INSTANCES,
        &|spec| {
            if spec.id == "stepping" {
                env.clone()
            } else {
                Vec::new()
            }
        },
        &[(FEATURE, SEATS)],
        4,
    )
    .await;
    leftovers.0.push(cl.servers[1].child.id());
    let rec = Recorder::new();
    let t0 = rec.t0();
    let (plain, stepping) = (cl.targets[0].clone(), cl.targets[1].clone());
    let mut f = Findings::new();

    // V logs in through the stepping instance, heartbeats once and vanishes:
    // its seat comes back lease_hold after by the database's clock, whatever
    // the stepping instance's says.
    let v = cl.client(&rec, "V", 3);
    let g = v.login(&stepping, FEATURE).await;
    let v_lease = g
        .granted()
        .unwrap_or_else(|| panic!("setup: V's login: {}", g.line(t0)))
        .to_string();
    let h = v.heartbeat(&stepping, std::slice::from_ref(&v_lease)).await;
    f.expect(
        h.alive(&v_lease) == Some(true),
        format!("V's heartbeat: {}", h.line(t0)),
    );

    let end = Instant::now() + STEP_EVERY * OFFSETS.len() as u32;
    let clients: Vec<_> = ["A", "B", "C"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            tokio::spawn(client_loop(
                cl.client(&rec, name, i),
                plain.clone(),
                stepping.clone(),
                end,
                fake_monotonic,
            ))
        })
        .collect();

    // The stepper, confirming each step through the instance's log.
    let mut steps = Vec::new();
    for offset in OFFSETS {
        clock.set(offset);
        let at = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let measured = instance_offset(&cl.servers[1], &stepping).await;
        steps.push(format!(
            "{} set {offset:+} s, measured {}",
            testkit::promise::rel(t0, at),
            measured
                .as_ref()
                .map_or_else(|e| format!("nothing ({e})"), |m| format!("{m:+.3} s"))
        ));
        f.expect(
            measured
                .as_ref()
                .is_ok_and(|m| (m - offset as f64).abs() < OFFSET_SLACK),
            format!(
                "the stepping instance's clock should be {offset:+} s off, measured {measured:?}"
            ),
        );
        tokio::time::sleep_until((at + STEP_EVERY).into()).await;
    }
    let mut unavailable_answers = 0;
    for c in clients {
        let out = c.await.unwrap();
        unavailable_answers += out.unavailable;
        for broken in out.broken {
            f.expect(false, broken);
        }
    }

    // The instance serves again (at once, unless its monotonic clock
    // stepped: then once that clock is past every time it has seen).
    let back = Instant::now();
    let mut recovered = None;
    while recovered.is_none() && back.elapsed() < RECOVERY {
        let g = v.login(&stepping, FEATURE).await;
        if let Some(lease) = g.granted() {
            v.logout(&stepping, lease).await;
        }
        if g.granted().is_some() || no_seat(&g.answer) {
            recovered = Some(back.elapsed());
        } else {
            tokio::time::sleep(RETRY).await;
        }
    }
    f.expect(
        recovered.is_some(),
        format!("the stepping instance does not serve again {RECOVERY:?} after its clock is back"),
    );

    let records = rec.records();
    let grants = records.iter().filter(|r| r.granted().is_some()).count();
    // With the monotonic clock stepping, the stepping instance answers
    // "unavailable" much of the time, and only the plain one grants.
    let enough = if fake_monotonic { 3 } else { 6 };
    f.expect(
        grants >= enough,
        format!("the clients should have taken seats again and again, only {grants} grants"),
    );
    let through_stepping: Vec<_> = records
        .iter()
        .filter(|r| r.instance == stepping.name)
        .collect();
    let served = through_stepping
        .iter()
        .filter(|r| matches!(r.answer, Answer::Sealed(_)) && !unavailable(&r.answer))
        .count();
    eprintln!(
        "monotonic clock {}; steps:\n  {}\n{grants} grants; {} requests through the stepping instance, {served} served, {unavailable_answers} of the clients' answered 'unavailable'; serving again {recovered:?} after the last step",
        if fake_monotonic { "stepped too" } else { "real" },
        steps.join("\n  "),
        through_stepping.len(),
    );
    if std::env::var_os("FLOATLM_PROMISE_LOG").is_some() {
        eprintln!("{}", cl.logs());
    }
    stop_gently(&mut cl.servers[1]);
    f.finish(&rec, &cl.seats);
}

/// The wall clock steps, the monotonic clock does not (a host's NTP step):
/// nothing a client sees may change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promises_hold_while_an_instance_wall_clock_steps() {
    bounded(promises_hold_while_an_instance_clock_steps(false)).await
}

/// Both clocks step (no real host does this; tokio's timers and every
/// `Instant` in the instance jump with them): "unavailable" is tolerated,
/// nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promises_hold_while_an_instance_wall_and_monotonic_clocks_step() {
    bounded(promises_hold_while_an_instance_clock_steps(true)).await
}
