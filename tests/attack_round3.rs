//! Round 3 attacks: grants and extensions decide on reads that a
//! concurrent change has already made stale.
//!
//! A feature licensed by two licenses that has shrunk (a slot retiring with
//! a live lease) is granted only by counting (`seats_to_spare` in
//! src/storage/mysql/seats.rs): free active slots of the open licenses minus the
//! retiring leases. The retiring rows are locked, so grants *that take that
//! path* count one after another. But three things that a grant or an
//! extension relies on are read without a lock that the change takes:
//!
//! * `extend_batch` reads the clock (`db_now`) before it locks the rows and
//!   conditions its UPDATE on `expires_at > <that clock>`: a lease that
//!   expired in between is extended anyway, after the count called its slot
//!   free (`an_extension_whose_clock_…`);
//! * `grant_once` decides "nothing is retiring" (`any_retiring`, a
//!   non-locking read) and then takes a slot of the *other* license after a
//!   shrink committed: it takes no retiring lock, so a grant that counts
//!   meanwhile does not see the slot it is about to take
//!   (`a_grant_that_saw_nothing_retiring_…`);
//! * `grant_once` caps its promise by the license window it read first
//!   (`FEATURES_NOW_SQL`, non-locking); a re-apply that shortens the window
//!   meanwhile finds no live lease to protect (`check_window_change`), and
//!   the grant promises past the new end (`a_grant_that_read_the_window_…`).
//!
//! Each needs a transaction that lasts a moment: a slow link between one
//! instance and the database (a cross-datacenter member of the cluster, a
//! congested network, a paused proxy). [`StallProxy`] is that link: a TCP
//! proxy in front of MariaDB that forwards everything at once, except that,
//! when armed, it holds back one connection's traffic after the k-th
//! statement executed in its next transaction, until the test lets it go
//! (well under MariaDB's 5 s `idle_transaction_timeout`). The timing is
//! exact, so the tests are deterministic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::mysql_wire;
use testkit::promise::{
    Findings, InstanceSpec, PromiseCluster, RecClient, Record, Recorder, Target,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

// ------------------------------------------------------------ the slow link

/// A TCP proxy in front of the test MariaDB. It parses the client's MySQL
/// packets (plain text: the test server has no TLS) only to count them: a
/// command packet has sequence number 0; `COM_QUERY "BEGIN"` (0x03) starts
/// a transaction, `COM_STMT_EXECUTE` (0x17) runs a prepared statement.
struct StallProxy {
    port: u16,
    ctl: Arc<Ctl>,
}

struct Ctl {
    /// Stall the next connection that begins a transaction, after this many
    /// executed statements in it.
    armed: Mutex<Option<usize>>,
    /// One permit each time a connection stalls.
    stalled: Semaphore,
    /// One permit lets one stalled connection go on.
    release: Semaphore,
}

impl StallProxy {
    async fn start(upstream: String) -> StallProxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let ctl = Arc::new(Ctl {
            armed: Mutex::new(None),
            stalled: Semaphore::new(0),
            release: Semaphore::new(0),
        });
        let c = ctl.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let (c, up) = (c.clone(), upstream.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&up).await {
                        pipe(client, server, c).await;
                    }
                });
            }
        });
        StallProxy { port, ctl }
    }

    /// The next transaction any connection begins is held up right after
    /// its `execs`-th statement was forwarded (the server runs that one).
    fn arm(&self, execs: usize) {
        *self.ctl.armed.lock().unwrap() = Some(execs);
    }

    /// Waits until an armed connection stalled.
    async fn stalled(&self, within: Duration) -> bool {
        match tokio::time::timeout(within, self.ctl.stalled.acquire()).await {
            Ok(Ok(p)) => {
                p.forget();
                true
            }
            _ => false,
        }
    }

    /// Lets the stalled connection go on.
    fn release(&self) {
        self.ctl.release.add_permits(1);
    }
}

async fn pipe(client: TcpStream, server: TcpStream, ctl: Arc<Ctl>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    });
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 1 << 16];
    // (stall after n executes, executes so far) while this connection is
    // the armed one.
    let mut target: Option<(usize, usize)> = None;
    let mut hold = false;
    loop {
        let n = match cr.read(&mut tmp).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        for pkt in mysql_wire::take_packets(&mut buf) {
            if hold {
                // Held until the test lets this connection go on.
                if let Ok(p) = ctl.release.acquire().await {
                    p.forget();
                }
                hold = false;
            }
            if sw.write_all(&pkt).await.is_err() {
                return;
            }
            let Some((cmd, body)) = mysql_wire::command(&pkt) else {
                continue;
            };
            if cmd == 0x03 && body.eq_ignore_ascii_case(b"BEGIN") {
                if let Some(k) = ctl.armed.lock().unwrap().take() {
                    target = Some((k, 0));
                }
            } else if cmd == 0x17 {
                if let Some((k, done)) = target.as_mut() {
                    *done += 1;
                    if *done == *k {
                        target = None;
                        hold = true;
                        ctl.stalled.add_permits(1);
                    }
                }
            }
        }
    }
    let _ = sw.shutdown().await;
}

// ------------------------------------------------------------------ helpers

fn granted(r: &Record, rec: &Recorder) -> String {
    r.granted()
        .unwrap_or_else(|| panic!("setup: expected a grant: {}", r.line(rec.t0())))
        .to_string()
}

/// Signs `toml` with the cluster's vendor key and applies it through x.
fn apply(cl: &PromiseCluster, name: &str, toml: &str) -> String {
    let d = cl.dir.path();
    let def = d.join(format!("{name}.toml"));
    std::fs::write(&def, toml).unwrap();
    let lic = d.join(format!("{name}.lic")).display().to_string();
    testkit::floatlm_ok(&[
        "vendor",
        "sign",
        "--key",
        &d.join("vendor/vendor.key").display().to_string(),
        &def.display().to_string(),
        "-o",
        &lic,
    ]);
    testkit::admin_cli(&cl.servers[0], &["apply", &lic])
}

fn license(id: &str, serial: u32, seats: u32) -> String {
    format!(
        "license_id = \"{id}\"\nserial = {serial}\ncustomer = \"test\"\n[[feature]]\nname = \"cad\"\nseats = {seats}\n"
    )
}

/// A second instance `s` (lease_ttl 5 s, lease_hold `hold`) on the
/// cluster's database, reached through a [`StallProxy`].
async fn slow_instance(
    cl: &PromiseCluster,
    hold: &'static str,
) -> (StallProxy, testkit::ServerProc) {
    slow_instance_with(cl, "5s", hold).await
}

/// [`slow_instance`] with its `lease_ttl` too.
async fn slow_instance_with(
    cl: &PromiseCluster,
    ttl: &'static str,
    hold: &'static str,
) -> (StallProxy, testkit::ServerProc) {
    let proxy = StallProxy::start("127.0.0.1:3306".into()).await;
    let url = testkit::mysql_server_url();
    let host = url.rsplit_once('@').map_or(url.as_str(), |(_, h)| h);
    assert_eq!(
        host, "127.0.0.1:3306",
        "these tests proxy the default test MariaDB"
    );
    let db_url = format!("mysql://root@127.0.0.1:{}/{}", proxy.port, cl.db().name);
    let dir = cl.dir.path().to_path_buf();
    let pubkey = dir.join("vendor/vendor.pub").display().to_string();
    let s = tokio::task::spawn_blocking(move || {
        testkit::cluster_instance(
            &dir,
            &db_url,
            "s",
            "127.0.0.1:0",
            &["--vendor-key", &pubkey],
            &[("FLOATLM_LEASE_TTL", ttl), ("FLOATLM_LEASE_HOLD", hold)],
        )
    })
    .await
    .unwrap();
    (proxy, s)
}

/// Heartbeats `lease` through `at` every 700 ms until `stop`.
fn keep_alive(
    who: Arc<RecClient>,
    at: Target,
    lease: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let until = Instant::now() + Duration::from_secs(45);
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            who.heartbeat(&at, std::slice::from_ref(&lease)).await;
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    })
}

/// (feature_id, slot_no) of a lease id.
fn slot_of(lease: &str) -> (i64, i64) {
    let mut it = lease.split('.').map(|p| p.parse::<i64>().unwrap_or(-1));
    (it.next().unwrap(), it.next().unwrap())
}

/// How long until the slot's recorded expiry, by the database clock.
async fn until_expiry(db: &sqlx::MySqlPool, (f, s): (i64, i64)) -> Duration {
    let us: i64 = sqlx::query_scalar(
        "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, NOW(6), expires_at) AS SIGNED) FROM slots WHERE feature_id = ? AND slot_no = ?",
    )
    .bind(f)
    .bind(s)
    .fetch_one(db)
    .await
    .unwrap();
    Duration::from_micros(us.max(0) as u64)
}

// -------------------------------------------------------------- the attacks

/// Licenses PROMISE (cad 3, shrunk to 1) and L2 (cad 2): cad has 3 seats.
/// A holds PROMISE's active slot 0, B its retiring slot 1, X L2's slot 0:
/// the feature is full, and a login (C's) is refused, as it should be.
///
/// X stops heartbeating, then, a second before its lease's recorded expiry
/// E, sends one heartbeat to instance s, whose link to the database is
/// slow. s reads the row (live, under half a TTL left), so it extends the
/// lease before answering (`extend_batch`): its transaction reads the
/// clock (`db_now`, before E) and only then, once the link recovers (after
/// E), locks the row and runs `UPDATE … SET expires_at = GREATEST(…)
/// WHERE … AND expires_at > <that clock>`. The lease expired in between,
/// but the stale clock still matches it.
///
/// Just after E, before s's lock, C logs in through x. `seats_to_spare`
/// counts free active slots: L2's slot 0 (expired at E) and slot 1, less
/// B's retiring lease: 1 to spare. C gets L2's slot 1 — right at that
/// moment: A, B and C are 3 of 3. Then s's UPDATE revives X's expired lease
/// and answers X `alive` with a 4 s promise: A, B, X and C hold promises of
/// a 3-seat feature. (Without a retiring slot no grant counts, and a
/// revived lease takes no seat anybody was granted; the count is what
/// trusts the expiry.)
///
/// A variant that holds only s's COMMIT back (the UPDATE ran while the lease
/// was live) also lets the count see the slot free (a non-locking read of
/// the committed expiry); it is not tested here because whether the count's
/// owed-leases `FOR UPDATE` happens to wait on the locked row depends on the
/// plan MariaDB picks (it did in some runs, not in others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_whose_clock_was_read_before_expiry_revives_a_seat_counted_free() {
    let mut cl =
        PromiseCluster::start(&[InstanceSpec::new("x", "5s", "5s")], &[("cad", 3)], 4).await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let x = cl.targets[0].clone();
    let (proxy, s_proc) = slow_instance(&cl, "5s").await;
    let s = Target::of(&s_proc);
    let db = sqlx::MySqlPool::connect(&cl.db().url).await.unwrap();
    let (a, b, c, xc) = (
        Arc::new(cl.client(&rec, "A", 0)),
        Arc::new(cl.client(&rec, "B", 1)),
        Arc::new(cl.client(&rec, "C", 2)),
        Arc::new(cl.client(&rec, "X", 3)),
    );
    let mut f = Findings::new();

    apply(&cl, "l2", &license("L2", 1, 2));
    let la = granted(&a.login(&x, "cad").await, &rec);
    let lb = granted(&b.login(&x, "cad").await, &rec);
    assert_eq!(
        (slot_of(&la).1, slot_of(&lb).1, slot_of(&la).0),
        (0, 1, slot_of(&lb).0),
        "setup: A and B hold PROMISE's slots 0 and 1"
    );
    apply(&cl, "promise2", &license("PROMISE", 2, 1));
    cl.seats.insert("cad".into(), 3);
    let stop = Arc::new(AtomicBool::new(false));
    let keep_a = keep_alive(a.clone(), x.clone(), la.clone(), stop.clone());
    let keep_b = keep_alive(b.clone(), x.clone(), lb.clone(), stop.clone());
    let lx = granted(&xc.login(&x, "cad").await, &rec);
    assert_eq!(
        slot_of(&lx).1,
        0,
        "setup: X holds L2's slot 0 ({lx}, A holds {la})"
    );
    assert_ne!(slot_of(&lx).0, slot_of(&la).0, "setup: X holds an L2 slot");

    let control = c.login(&x, "cad").await;
    assert!(
        control.granted().is_none(),
        "setup: cad is full (A, B on the retiring slot, X), C must be refused: {}",
        control.line(t0)
    );
    // X's session with s, so the attack heartbeat does not handshake.
    xc.login(&s, "warm-up").await;

    // A second before X's lease expires, X heartbeats through s.
    let left = until_expiry(&db, slot_of(&lx)).await;
    tokio::time::sleep(left.saturating_sub(Duration::from_millis(1000))).await;
    proxy.arm(1); // the extension's NOW(6) runs; its lock and UPDATE wait
    let heartbeat = xc.heartbeat(&s, std::slice::from_ref(&lx));
    let attack = async {
        let stalled = proxy.stalled(Duration::from_secs(3)).await;
        let past = until_expiry(&db, slot_of(&lx)).await + Duration::from_millis(250);
        tokio::time::sleep(past).await;
        // s's transaction has not locked the slot yet: C's grant waits for
        // nothing.
        let g = c.login(&x, "cad").await;
        proxy.release();
        (stalled, g)
    };
    let (hb, (stalled, gc)) = tokio::join!(heartbeat, attack);
    assert!(
        stalled,
        "setup: s's extension never reached the proxy's stall point"
    );
    eprintln!("X's heartbeat through s: {}", hb.line(t0));
    eprintln!("C's login during s's extension: {}", gc.line(t0));
    f.expect(
        !(hb.alive(&lx) == Some(true) && gc.granted().is_some()),
        format!(
            "cad has 3 seats, held by A, B (retiring) and X: X's lease cannot be kept alive and C granted another seat:\n    {}\n    {}",
            hb.line(t0),
            gc.line(t0)
        ),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    keep_a.await.unwrap();
    keep_b.await.unwrap();
    drop(s_proc);
    f.finish(&rec, &cl.seats);
}

/// Licenses PROMISE (cad 2) and L2 (cad 2). A and B hold PROMISE's slots.
/// D logs in through the slow instance s: its grant reads the feature rows,
/// claims its request id and runs `any_retiring` (nothing retiring), and
/// its link then stalls. PROMISE serial 2 (cad 1) is applied meanwhile: B's
/// slot retires, cad now has 3 seats, 2 held, one to spare. C logs in
/// through x and is granted it (L2's slot 0): right. Then s's link
/// recovers: D's grant, which never counts because it saw nothing retiring,
/// finds no free slot of PROMISE and takes L2's slot 1, where nothing
/// retires either. Four leases of a 3-seat feature, with grants answered
/// after the shrink was applied.
///
/// No serial order gives this: D before the shrink leaves C nothing to
/// spare, D after it counts and is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_saw_nothing_retiring_before_a_shrink_takes_a_seat_after_it() {
    let mut cl =
        PromiseCluster::start(&[InstanceSpec::new("x", "5s", "10s")], &[("cad", 2)], 4).await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let x = cl.targets[0].clone();
    let (proxy, s_proc) = slow_instance(&cl, "10s").await;
    let s = Target::of(&s_proc);
    let (a, b, c, d) = (
        Arc::new(cl.client(&rec, "A", 0)),
        Arc::new(cl.client(&rec, "B", 1)),
        Arc::new(cl.client(&rec, "C", 2)),
        Arc::new(cl.client(&rec, "D", 3)),
    );
    let mut f = Findings::new();

    apply(&cl, "l2", &license("L2", 1, 2));
    let la = granted(&a.login(&x, "cad").await, &rec);
    let lb = granted(&b.login(&x, "cad").await, &rec);
    assert_eq!(
        (slot_of(&la).1, slot_of(&lb).1, slot_of(&la).0),
        (0, 1, slot_of(&lb).0),
        "setup: A and B hold PROMISE's slots 0 and 1"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let keep_a = keep_alive(a.clone(), x.clone(), la.clone(), stop.clone());
    let keep_b = keep_alive(b.clone(), x.clone(), lb.clone(), stop.clone());
    // D's session with s, so the login does not handshake.
    d.login(&s, "warm-up").await;

    // The replay lookup, the feature rows, the request-id claim and
    // `any_retiring` run; the rest of D's grant waits.
    proxy.arm(4);
    let login_d = d.login(&s, "cad");
    let attack = async {
        let stalled = proxy.stalled(Duration::from_secs(3)).await;
        let cl = &cl;
        let out = tokio::task::block_in_place(|| apply(cl, "promise2", &license("PROMISE", 2, 1)));
        eprintln!("PROMISE serial 2 applied during D's grant: {}", out.trim());
        let gc = c.login(&x, "cad").await;
        proxy.release();
        (stalled, gc)
    };
    let (gd, (stalled, gc)) = tokio::join!(login_d, attack);
    cl.seats.insert("cad".into(), 3);
    assert!(
        stalled,
        "setup: D's grant never reached the proxy's stall point"
    );
    eprintln!("C's login after the shrink: {}", gc.line(t0));
    eprintln!("D's login, begun before the shrink: {}", gd.line(t0));
    f.expect(
        !(gc.granted().is_some() && gd.granted().is_some()),
        format!(
            "after the shrink cad has 3 seats and A and B hold 2: C and D must not both be granted:\n    {}\n    {}",
            gc.line(t0),
            gd.line(t0)
        ),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    keep_a.await.unwrap();
    keep_b.await.unwrap();
    drop(s_proc);
    f.finish(&rec, &cl.seats);
}

/// The same stale read, against a license window instead of a seat count.
/// cad has one seat at every instant: license PROMISE until T, license L2
/// from T (a vendor moving the customer to a new license), T a few seconds
/// away. D logs in through the slow instance s: its grant reads the feature
/// rows (PROMISE's window open, no end) and its link stalls. PROMISE serial
/// 2, ending the window at T, is applied meanwhile: no slot of PROMISE is
/// live, so the rule that refuses closing a window under live promises
/// (`check_window_change`) has nothing to refuse. s's link recovers; D's
/// grant takes PROMISE's slot and caps its promise by the window it read
/// (none): a 10 s promise, past T. Just after T, C logs in through x and is
/// granted L2's seat. Two leases of a 1-seat feature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_read_the_window_before_it_was_shortened_promises_past_it() {
    let cl = PromiseCluster::start(&[InstanceSpec::new("x", "10s", "20s")], &[("cad", 1)], 2).await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let x = cl.targets[0].clone();
    let (proxy, s_proc) = slow_instance_with(&cl, "10s", "20s").await;
    let s = Target::of(&s_proc);
    let (c, d) = (cl.client(&rec, "C", 0), cl.client(&rec, "D", 1));
    let mut f = Findings::new();

    let t = chrono::Utc::now() + chrono::Duration::seconds(5);
    let t_str = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    apply(
        &cl,
        "l2",
        &format!("{}not_before = \"{t_str}\"\n", license("L2", 1, 1)),
    );
    d.login(&s, "warm-up").await;

    // The replay lookup and the feature rows run; the rest waits.
    proxy.arm(2);
    let login_d = d.login(&s, "cad");
    let attack = async {
        let stalled = proxy.stalled(Duration::from_secs(3)).await;
        let cl = &cl;
        let out = tokio::task::block_in_place(|| {
            apply(
                cl,
                "promise2",
                &format!("{}expires = \"{t_str}\"\n", license("PROMISE", 2, 1)),
            )
        });
        eprintln!(
            "PROMISE serial 2 (window ends {t_str}) applied during D's grant: {}",
            out.trim()
        );
        proxy.release();
        stalled
    };
    let (gd, stalled) = tokio::join!(login_d, attack);
    assert!(
        stalled,
        "setup: D's grant never reached the proxy's stall point"
    );
    eprintln!(
        "D's login, begun before the window was shortened: {}",
        gd.line(t0)
    );

    // Just past T: PROMISE's window closed, L2's opened.
    let past = (t - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(300);
    tokio::time::sleep(past).await;
    let mut gc = c.login(&x, "cad").await;
    for _ in 0..10 {
        if gc.granted().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        gc = c.login(&x, "cad").await;
    }
    eprintln!("C's login after T: {}", gc.line(t0));
    f.expect(
        gd.granted().is_none() || gc.granted().is_none(),
        format!(
            "cad has one seat at every instant: D's grant must not promise past T while C gets L2's seat:\n    {}\n    {}",
            gd.line(t0),
            gc.line(t0)
        ),
    );
    drop(s_proc);
    f.finish(&rec, &cl.seats);
}
