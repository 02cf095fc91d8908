//! Issue 11, the database goes back in time: a restore from a backup while
//! the instances keep serving, checked on promises (crates/testkit/src/promise.rs)
//! and against the procedure of docs/seats.md, "When the database goes back
//! in time".
//!
//! Two or three instances share one MariaDB database with a 1-seat feature.
//! The database is backed up with `mariadb-dump` while the seat is free;
//! client C logs in and heartbeats; the dump is restored into the same
//! database as an operator would (`mariadb DB < dump.sql`: DROP TABLE,
//! CREATE TABLE and INSERT, table by table) while the instances run. C's
//! lease is gone from the database, but C still holds a promise for it.
//! (The last test backs up while C holds the seat instead.)
//!
//! `floatlm admin quarantine` (src/storage/*/leases.rs, `quarantine`) ends
//! every lease in one UPDATE of every active or retiring slot (holder,
//! request id and client info cleared, the lease nonce set to 0, so no
//! restored lease id matches again) and holds every seat by nobody until at
//! least NOW + hold, never earlier than the expiry the row already had. The
//! default hold is the longest `lease_ttl` any instance recorded plus 2 s
//! (src/app/seats.rs); `--hold` chooses another.
//!
//! * With the procedure (the quarantine against one instance right after
//!   the restore), client D of the *same identity* is refused with
//!   `no_license` until the hold the database records ends and granted
//!   within a few seconds after it; C's heartbeats after the restore are
//!   answered `alive: false` on every instance, and C's lease id is never
//!   alive again although D's lease names the same feature, slot, lease_gen
//!   and holder (only the nonce differs).
//! * With instances of different lease TTLs (5 s and 15 s), the quarantine
//!   run against the short-TTL instance with its default hold outlasts the
//!   promise C was given by the long-TTL one, and so does `--hold 15s`; D is
//!   refused until the hold ends.
//! * Without the quarantine, D is granted the seat at once while C's promise
//!   runs: the checker must report exactly that overlap. That test passes
//!   when the checker fails; it shows what the procedure protects against.
//! * A lease its holder gave up *after* the backup (C logs in with request
//!   id C-R before the backup and out after it; D takes the seat) comes back
//!   live with the restore; the quarantine ends it with every other lease,
//!   so C's resend of C-R is not granted and C's heartbeat of the old lease
//!   is not answered alive, and the checker finds no overlap with D's
//!   promise.

use floatlm_protocol::messages::{ErrorCode, Response};
use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::promise::{
    Findings, InstanceSpec, PromiseCluster, RecClient, Record, Recorder, Target,
};
use testkit::{bin, mysql_server_url, CLUSTER_TOKEN};

const FEATURE: &str = "cad";
/// One test from start to end, cluster start included.
const TEST_DEADLINE: Duration = Duration::from_secs(60);
/// `mariadb-dump` of a dozen small tables, or loading that dump back: well
/// under a second here; the bound is for a loaded machine.
const TOOL_DEADLINE: Duration = Duration::from_secs(20);
/// The measured end of the quarantine is good to a few milliseconds (one
/// round trip to the database); attempts this close to it may go either way.
const EDGE: Duration = Duration::from_millis(300);
/// After the quarantine ends, D's next attempt must be granted: attempts go
/// every [`RETRY`], and a grant is one round trip.
const GRANT_WITHIN: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_millis(250);
/// C heartbeats far more often than the client library would (a third of
/// the TTL), so that several heartbeats meet the restore half done.
const BEAT: Duration = Duration::from_millis(150);

/// Short leases: the default quarantine hold is the longest lease_ttl + 2 s
/// = 7 s.
const INSTANCES: [InstanceSpec; 3] = [
    InstanceSpec::new("a", "5s", "10s"),
    InstanceSpec::new("b", "5s", "10s"),
    InstanceSpec::new("c", "5s", "10s"),
];

/// Long leases for the test without the quarantine: C's promise (15 s) must
/// surely outlive the restore, however slow the machine is.
const LONG_INSTANCES: [InstanceSpec; 2] = [
    InstanceSpec::new("a", "15s", "30s"),
    InstanceSpec::new("b", "15s", "30s"),
];

/// Runs a test body with [`TEST_DEADLINE`].
async fn bounded(body: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_DEADLINE, body).await.is_err() {
        panic!("the test did not finish within {TEST_DEADLINE:?}");
    }
}

/// The lease a login was granted; the scenario cannot go on without it.
fn granted(r: &Record, rec: &Recorder) -> String {
    r.granted()
        .unwrap_or_else(|| panic!("setup: expected a grant: {}", r.line(rec.t0())))
        .to_string()
}

/// `feature_id.slot_no.lease_gen` of a lease id (everything but the nonce).
fn without_nonce(lease: &str) -> &str {
    lease.rsplit_once('.').map_or(lease, |(head, _)| head)
}

/// When the last promise of `lease` told to anyone ends.
fn promised_until(rec: &Recorder, lease: &str) -> Option<Instant> {
    rec.records()
        .iter()
        .flat_map(|r| {
            r.promises()
                .into_iter()
                .filter(|(l, _)| *l == lease)
                .map(|(_, ttl)| r.sent + Duration::from_millis(ttl))
                .collect::<Vec<_>>()
        })
        .max()
}

// ------------------------------------------------------ the operator's tools

/// The `mariadb` and `mariadb-dump` command-line clients, pointed at the
/// test server (`FLOATLM_TEST_MYSQL_URL` or the shared one on 3306), the way
/// an operator runs them: `--no-defaults`, TCP, the password (if any) in
/// `MYSQL_PWD` rather than on the command line.
struct MariaDbCli {
    connect: Vec<String>,
    password: Option<String>,
}

impl MariaDbCli {
    /// Reads `mysql://USER[:PASS]@HOST[:PORT]` (no percent-escapes).
    fn for_test_server() -> MariaDbCli {
        let url = mysql_server_url();
        let rest = url
            .strip_prefix("mysql://")
            .unwrap_or_else(|| panic!("the test server URL {url} is not mysql://…"));
        let rest = rest.split('/').next().unwrap_or(rest);
        let (userinfo, hostport) = rest.rsplit_once('@').unwrap_or(("root", rest));
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p.to_string())),
            None => (userinfo, None),
        };
        let (host, port) = hostport.split_once(':').unwrap_or((hostport, "3306"));
        MariaDbCli {
            connect: vec![
                "--no-defaults".into(),
                "--protocol=tcp".into(),
                format!("--host={host}"),
                format!("--port={port}"),
                format!("--user={user}"),
            ],
            password,
        }
    }

    /// Runs `program` with stdin/stdout from/to files; returns how long it
    /// took, or panics with its stderr.
    async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&Path>,
        stdout: Option<&Path>,
    ) -> Duration {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&self.connect)
            .args(args)
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(p) = &self.password {
            cmd.env("MYSQL_PWD", p);
        }
        cmd.stdin(match stdin {
            Some(p) => Stdio::from(std::fs::File::open(p).expect("open the dump")),
            None => Stdio::null(),
        });
        cmd.stdout(match stdout {
            Some(p) => Stdio::from(std::fs::File::create(p).expect("create the dump file")),
            None => Stdio::null(),
        });
        let began = Instant::now();
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (apt-get install -y mariadb-client; scripts/test.sh installs MariaDB)")
        });
        let out = tokio::time::timeout(TOOL_DEADLINE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| {
                panic!("{program} {args:?} did not finish within {TOOL_DEADLINE:?}")
            })
            .expect("wait for the MariaDB client");
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        began.elapsed()
    }

    /// `mariadb-dump --single-transaction DB > to`: a consistent snapshot of
    /// the one database, without locking the running instances out.
    async fn dump(&self, db: &str, to: &Path) -> Duration {
        let took = self
            .run(
                "mariadb-dump",
                &["--single-transaction", db],
                None,
                Some(to),
            )
            .await;
        // Sealed columns are binary: the dump is not UTF-8 text.
        let dumped = std::fs::read(to).expect("read the dump");
        let text = String::from_utf8_lossy(&dumped);
        assert!(
            text.contains("DROP TABLE IF EXISTS `slots`") && text.contains("INSERT INTO `slots`"),
            "the dump {} should replace the slots table and fill it",
            to.display()
        );
        took
    }

    /// `mariadb DB < from`: every table dropped, created and filled again.
    async fn restore(&self, db: &str, from: &Path) -> Duration {
        self.run("mariadb", &[db], Some(from), None).await
    }
}

/// `floatlm admin --url … ARGS` against `at`, as a child process (the
/// runtime's threads keep serving the test's clients meanwhile); its stdout.
async fn admin(at: &Target, args: &[&str]) -> String {
    let url = format!("http://{}", at.admin.as_deref().expect("an admin address"));
    let out = tokio::time::timeout(
        TOOL_DEADLINE,
        tokio::process::Command::new(bin())
            .args(["admin", "--url", &url, "--token", CLUSTER_TOKEN])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("floatlm admin {args:?} did not finish within {TOOL_DEADLINE:?}"))
    .expect("run floatlm admin");
    assert!(
        out.status.success(),
        "floatlm admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// When the quarantine of the feature's only slot ends, on the test's clock:
/// the database's own count of what is left of its hold, read now.
async fn quarantine_ends(pool: &sqlx::MySqlPool) -> Instant {
    let before = Instant::now();
    let left_us: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, NOW(6), expires_at) AS SIGNED) FROM slots",
    )
    .fetch_one(pool)
    .await
    .expect("read the quarantined slot");
    let after = Instant::now();
    let left = left_us.expect("the quarantined slot has an expiry");
    assert!(left > 0, "the quarantine is already over ({left} µs left)");
    before + (after - before) / 2 + Duration::from_micros(left as u64)
}

/// D's logins, through each instance in turn, every [`RETRY`], from now
/// until it is granted (or [`GRANT_WITHIN`] after `until`, the end of the
/// quarantine): refused with no_license while the quarantine runs, granted
/// after it. Notes every broken expectation in `f`; returns the grant.
async fn log_in_after_quarantine(
    d: &RecClient,
    targets: &[Target],
    until: Instant,
    f: &mut Findings,
    t0: Instant,
) -> Option<Record> {
    // Every attempt before the one granted was refused: `k` counts them.
    for k in 0.. {
        if Instant::now() > until + GRANT_WITHIN {
            break;
        }
        let r = d.login(&targets[k % targets.len()], FEATURE).await;
        if r.granted().is_some() {
            f.expect(
                k > 0,
                "D's first login came before the quarantine ended and must have been refused",
            );
            f.expect(
                r.sent + EDGE >= until,
                format!(
                    "D was granted the seat while the quarantine ran (until {}): {}",
                    testkit::promise::rel(t0, until),
                    r.line(t0)
                ),
            );
            eprintln!("D refused {k} times during the quarantine, then granted");
            return Some(r);
        }
        let no_seat = matches!(
            r.answer,
            testkit::promise::Answer::Sealed(Response::Error {
                code: ErrorCode::NoLicense,
                ..
            })
        );
        f.expect(
            no_seat,
            format!(
                "during the quarantine D must be refused with no_license: {}",
                r.line(t0)
            ),
        );
        tokio::time::sleep(RETRY).await;
    }
    f.expect(
        false,
        format!(
            "D was never granted the free seat: the quarantine ended at {}, D tried until {}",
            testkit::promise::rel(t0, until),
            testkit::promise::rel(t0, until + GRANT_WITHIN)
        ),
    );
    None
}

/// C's heartbeats of `lease`, every [`BEAT`], through each instance in turn,
/// whatever the answers say (a client that does not listen), until the
/// returned sender is dropped or sends.
fn keep_heartbeating(
    c: Arc<RecClient>,
    targets: Vec<Target>,
    lease: String,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        for k in 0.. {
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(BEAT) => {}
            }
            let at = &targets[k % targets.len()];
            c.heartbeat(at, std::slice::from_ref(&lease)).await;
        }
    });
    (stop, task)
}

// -------------------------------------------------------------------- tests

/// The documented procedure: restore, `floatlm admin quarantine` against one
/// instance, and nobody is granted the seat while C's promise may run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restore_the_quarantine_holds_the_seat_until_old_promises_ran_out() {
    bounded(async {
        let cl = PromiseCluster::start(&INSTANCES, &[(FEATURE, 1)], 1).await;
        let rec = Recorder::new();
        let t0 = rec.t0();
        let sql = MariaDbCli::for_test_server();
        let pool = sqlx::MySqlPool::connect(&cl.db().url).await.unwrap();
        let mut f = Findings::new();

        // The backup: license applied, identity created, the seat free.
        let backup = cl.dir.path().join("backup.sql");
        let dumped = sql.dump(&cl.db().name, &backup).await;

        // C and D: one identity, two programs (two sessions).
        let c = Arc::new(cl.client(&rec, "C", 0));
        let d = cl.client(&rec, "D", 0);
        let c_lease = granted(&c.login(&cl.targets[0], FEATURE).await, &rec);
        let hb = c
            .heartbeat(&cl.targets[1], std::slice::from_ref(&c_lease))
            .await;
        assert_eq!(hb.alive(&c_lease), Some(true), "setup: {}", hb.line(t0));
        let (stop_c, c_task) = keep_heartbeating(c.clone(), cl.targets.clone(), c_lease.clone());

        // The restore, while every instance serves C's heartbeats.
        let restore_began = Instant::now();
        let restored_in = sql.restore(&cl.db().name, &backup).await;
        let restored = Instant::now();
        // The procedure, against one instance.
        let out = admin(&cl.targets[1], &["quarantine"]).await;
        let quarantined = Instant::now();
        let until = quarantine_ends(&pool).await;
        eprintln!(
            "dump {dumped:?}; restore {restored_in:?} (from {} to {}); `floatlm admin quarantine` said {:?} at {}; the seat is held until {}",
            testkit::promise::rel(t0, restore_began),
            testkit::promise::rel(t0, restored),
            out.trim(),
            testkit::promise::rel(t0, quarantined),
            testkit::promise::rel(t0, until),
        );
        f.expect(
            out.contains("1 seat(s) held"),
            format!("the quarantine should report the one slot it holds: {out:?}"),
        );

        // D asks through each instance in turn until it is granted.
        let Some(g) = log_in_after_quarantine(&d, &cl.targets, until, &mut f, t0).await else {
            drop(stop_c);
            c_task.await.unwrap();
            f.finish(&rec, &cl.seats);
            return;
        };
        let d_lease = g.granted().unwrap().to_string();
        f.expect(
            d_lease != c_lease,
            format!("D was given C's old lease id {c_lease}"),
        );
        // The case the nonce exists for: same slot, same lease_gen (the
        // restored row was one grant behind), same holder.
        f.expect(
            without_nonce(&d_lease) == without_nonce(&c_lease),
            format!(
                "expected D's lease {d_lease} to differ from C's {c_lease} in the nonce only (the restore took the slot's lease_gen back)"
            ),
        );

        // C is told, on every instance, that its lease is gone; D holds.
        for at in &cl.targets {
            let h = c.heartbeat(at, std::slice::from_ref(&c_lease)).await;
            f.expect(
                h.alive(&c_lease) == Some(false),
                format!(
                    "C's lease {c_lease} ended with the restore and the seat is D's: C must hear alive: false: {}",
                    h.line(t0)
                ),
            );
            let h = d.heartbeat(at, std::slice::from_ref(&d_lease)).await;
            f.expect(
                h.alive(&d_lease) == Some(true),
                format!("D holds the seat: {}", h.line(t0)),
            );
        }
        let _ = stop_c.send(());
        c_task.await.unwrap();
        let out = d.logout(&cl.targets[0], &d_lease).await;
        f.expect(
            out.released() == Some(true),
            format!("D's logout: {}", out.line(t0)),
        );

        // C's old lease id is never alive again once the restore finished;
        // its first answered heartbeat after it says so.
        let after: Vec<Record> = rec
            .records()
            .into_iter()
            .filter(|r| r.client == "C" && r.sent >= restored && r.alive(&c_lease).is_some())
            .collect();
        f.expect(
            after.first().and_then(|r| r.alive(&c_lease)) == Some(false),
            "C's first answered heartbeat after the restore must be alive: false",
        );
        for r in &after {
            f.expect(
                r.alive(&c_lease) == Some(false),
                format!(
                    "C's lease {c_lease} is not in the restored database, yet: {}",
                    r.line(t0)
                ),
            );
        }
        eprintln!(
            "D granted {d_lease} at {}; C's lease {c_lease} promised until {}; {} of C's heartbeats answered after the restore",
            testkit::promise::rel(t0, g.received.unwrap()),
            promised_until(&rec, &c_lease).map_or("-".into(), |t| testkit::promise::rel(t0, t)),
            after.len()
        );
        if std::env::var_os("FLOATLM_PROMISE_LOG").is_some() {
            eprintln!("{}", cl.logs());
        }
        f.finish(&rec, &cl.seats);
    })
    .await
}

/// Instances with different lease TTLs: C's promise comes from the one with
/// the long TTL (15 s), the operator runs the quarantine against the one
/// with the short TTL (5 s). Its default hold is the longest lease_ttl any
/// instance recorded (15 s) plus 2 s, so it covers C's promise (it once was
/// the short instance's own lease_hold + 1 s, which ended first); an
/// explicit `--hold` covers it too, and nobody is granted the seat before
/// the hold ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mixed_lease_ttls_the_default_quarantine_covers_the_longest_ttl() {
    bounded(async {
        let cl = PromiseCluster::start(
            &[
                InstanceSpec::new("short", "5s", "10s"),
                InstanceSpec::new("long", "15s", "30s"),
            ],
            &[(FEATURE, 1)],
            2,
        )
        .await;
        let rec = Recorder::new();
        let t0 = rec.t0();
        let sql = MariaDbCli::for_test_server();
        let pool = sqlx::MySqlPool::connect(&cl.db().url).await.unwrap();
        let (short, long) = (&cl.targets[0], &cl.targets[1]);
        let (c, d) = (cl.client(&rec, "C", 0), cl.client(&rec, "D", 1));
        let mut f = Findings::new();

        let backup = cl.dir.path().join("backup.sql");
        sql.dump(&cl.db().name, &backup).await;
        let c_lease = granted(&c.login(long, FEATURE).await, &rec);
        let h = c.heartbeat(long, std::slice::from_ref(&c_lease)).await;
        assert_eq!(h.alive(&c_lease), Some(true), "setup: {}", h.line(t0));
        let c_until = promised_until(&rec, &c_lease).unwrap();
        sql.restore(&cl.db().name, &backup).await;

        // The default hold, run on the short instance: the longest lease_ttl
        // any instance recorded (the long one's 15 s) plus 2 s.
        admin(short, &["quarantine"]).await;
        let by_default = quarantine_ends(&pool).await;
        f.expect(
            by_default >= c_until,
            format!(
                "the default hold (until {}) must outlast C's promise from the long instance (until {})",
                testkit::promise::rel(t0, by_default),
                testkit::promise::rel(t0, c_until)
            ),
        );
        // An explicit hold of the largest lease_ttl covers it as well.
        admin(short, &["quarantine", "--hold", "15s"]).await;
        let until = quarantine_ends(&pool).await;
        eprintln!(
            "C promised until {}; default hold until {}; --hold 15s until {}",
            testkit::promise::rel(t0, c_until),
            testkit::promise::rel(t0, by_default),
            testkit::promise::rel(t0, until)
        );
        f.expect(
            until >= c_until,
            format!(
                "--hold 15s should hold the seat (until {}) past C's promise (until {})",
                testkit::promise::rel(t0, until),
                testkit::promise::rel(t0, c_until)
            ),
        );
        if let Some(g) = log_in_after_quarantine(&d, &cl.targets, until, &mut f, t0).await {
            let d_lease = g.granted().unwrap().to_string();
            let h = c.heartbeat(short, std::slice::from_ref(&c_lease)).await;
            f.expect(
                h.alive(&c_lease) == Some(false),
                format!("C's lease ended with the restore: {}", h.line(t0)),
            );
            d.logout(long, &d_lease).await;
        }
        f.finish(&rec, &cl.seats);
    })
    .await
}

/// What the procedure protects against. The same restore without the
/// quarantine: the restored row shows the seat free, so D (same identity) is
/// granted it at once while C's last heartbeat still promises it to C. The
/// checker must report that overlap; this test passes when it does, and
/// fails if D's grant ever stops overlapping (then the quarantine test above
/// no longer shows anything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_quarantine_a_restore_promises_one_seat_twice() {
    bounded(async {
        let cl = PromiseCluster::start(&LONG_INSTANCES, &[(FEATURE, 1)], 1).await;
        let rec = Recorder::new();
        let t0 = rec.t0();
        let sql = MariaDbCli::for_test_server();
        let (a, b) = (&cl.targets[0], &cl.targets[1]);

        let backup = cl.dir.path().join("backup.sql");
        sql.dump(&cl.db().name, &backup).await;
        let c = cl.client(&rec, "C", 0);
        let d = cl.client(&rec, "D", 0);
        let c_lease = granted(&c.login(a, FEATURE).await, &rec);
        let hb = c.heartbeat(b, std::slice::from_ref(&c_lease)).await;
        assert_eq!(hb.alive(&c_lease), Some(true), "setup: {}", hb.line(t0));
        let c_until = promised_until(&rec, &c_lease).unwrap();

        sql.restore(&cl.db().name, &backup).await;
        // No quarantine: D comes straight back.
        let g = d.login(b, FEATURE).await;
        let d_lease = g.granted().unwrap_or_else(|| {
            panic!(
                "after the restore the row shows the seat free, so D should have been granted it: {}",
                g.line(t0)
            )
        });
        assert!(
            g.received.unwrap() < c_until,
            "D's grant {} should come while C's promise (until {}) runs; the restore was too slow for this test to show anything",
            g.line(t0),
            testkit::promise::rel(t0, c_until)
        );
        assert_ne!(d_lease, c_lease, "the nonce tells the two leases apart");
        // Even without the quarantine, C's lease id does not come back.
        let h = c.heartbeat(a, std::slice::from_ref(&c_lease)).await;
        assert_eq!(h.alive(&c_lease), Some(false), "{}", h.line(t0));

        rec.dump_if_asked();
        match rec.check(&cl.seats) {
            Ok(peak) => panic!(
                "the checker held (peak {peak:?}), but D was told it holds the only seat at {} while C's promise ran until {}: the checker missed an overlap\n{}",
                testkit::promise::rel(t0, g.received.unwrap()),
                testkit::promise::rel(t0, c_until),
                rec.dump()
            ),
            Err(e) => {
                assert!(
                    e.anomalies.is_empty() && e.violations.len() == 1,
                    "expected exactly one overlap and nothing else:\n{e}"
                );
                let v = &e.violations[0];
                assert_eq!(v.feature, FEATURE, "{e}");
                let mut both = vec![c_lease.clone(), d_lease.to_string()];
                both.sort();
                assert_eq!(v.leases, both, "{e}");
                eprintln!("as expected without the quarantine, the checker reports:\n{e}");
            }
        }
        d.logout(b, d_lease).await;
    })
    .await
}

/// A lease that ended after the backup comes back with the restore: the
/// restored row names it, live, and the quarantine keeps the holders of
/// live rows ("held ones at least as long as before"). C logs in (request
/// id C-R) before the backup and logs out after it; D is granted the seat
/// and heartbeats. After the restore and the quarantine, C resends C-R and
/// heartbeats its old lease: docs/seats.md promises that a login resent
/// after its lease ended is never granted and that a heartbeat sent after a
/// logout was answered is never alive, while D's last promise still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_given_up_after_the_backup_does_not_come_back_with_the_restore() {
    bounded(async {
        let cl = PromiseCluster::start(&INSTANCES, &[(FEATURE, 1)], 2).await;
        let rec = Recorder::new();
        let t0 = rec.t0();
        let sql = MariaDbCli::for_test_server();
        let (a, b) = (&cl.targets[0], &cl.targets[1]);
        let (c, d) = (cl.client(&rec, "C", 0), cl.client(&rec, "D", 1));
        let mut f = Findings::new();

        let c_lease = granted(&c.login_with(a, FEATURE, "C-R").await, &rec);
        // The backup: C holds the seat.
        let backup = cl.dir.path().join("backup.sql");
        sql.dump(&cl.db().name, &backup).await;
        let out = c.logout(a, &c_lease).await;
        assert_eq!(out.released(), Some(true), "setup: {}", out.line(t0));
        let d_lease = granted(&d.login(b, FEATURE).await, &rec);
        let h = d.heartbeat(b, std::slice::from_ref(&d_lease)).await;
        assert_eq!(h.alive(&d_lease), Some(true), "setup: {}", h.line(t0));

        sql.restore(&cl.db().name, &backup).await;
        let said = admin(b, &["quarantine"]).await;
        eprintln!("`floatlm admin quarantine`: {}", said.trim());

        let r = c.resend_login(a, "C-R").await;
        f.expect(
            r.granted().is_none(),
            format!(
                "C-R's lease was released before the restore; its resend must not be granted: {}",
                r.line(t0)
            ),
        );
        let h = c.heartbeat(b, std::slice::from_ref(&c_lease)).await;
        f.expect(
            h.alive(&c_lease) != Some(true),
            format!(
                "C logged out of {c_lease} before the restore; a heartbeat sent after that logout was answered must not be alive: {}",
                h.line(t0)
            ),
        );
        if std::env::var_os("FLOATLM_PROMISE_LOG").is_some() {
            eprintln!("{}", cl.logs());
        }
        f.finish(&rec, &cl.seats);
    })
    .await
}
