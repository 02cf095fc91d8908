//! Round 6 attacks: commit ambiguity, the re-pick of a grant racing an
//! extension at the very instant a lease expires, and a transaction that
//! SQLite rolled back by itself in the middle of a seat write.
//!
//! * **A COMMIT whose answer is lost** (MariaDB, through [`CommitCut`], a
//!   TCP proxy that forwards one `COMMIT` to the server, lets the server
//!   run it, and closes the connection before the OK reaches floatlm): the
//!   transaction committed, floatlm saw a broken connection. A batch of
//!   grants then grants each request alone, which must replay the committed
//!   grants (the same leases, `replayed`), never take other slots; a lone
//!   grant answers an error and its resend replays the committed lease; a
//!   batch of releases answers "not live" for leases it did release (the
//!   seats are free, no lease is left half released); an extension answers
//!   an error while the row is extended (the heartbeat then answers from
//!   its read, a shorter true promise). The grants also with the COMMIT
//!   still in flight (floatlm sees the close 300 ms before the server gets
//!   the COMMIT): the retry waits on the open transaction's claim of its
//!   request id, then replays. No path answers a grant that did not commit
//!   or grants a slot twice (pass).
//! * **A grant at the expiry boundary** (both backends; on MariaDB grants
//!   through a second pool, lone and batched, with the `SKIP LOCKED` pick
//!   and its re-pick after a plain read shows a free slot): an extender
//!   extends each lease at its recorded expiry ± 3 ms, and checks read it,
//!   while grants spin. Audited from what each call answered: every slot
//!   granted again after an `Extended(at)` answer is granted at or after
//!   `at + hold`, after a `Live` read at or after the expiry the read saw,
//!   after a grant at or after its expiry (pass).
//! * **SQLite rolls a transaction back by itself** (a trigger that raises
//!   `ROLLBACK` stands in for a full disk or an I/O error in the middle of
//!   a grant or an extension): the grant answers an error and leaves the
//!   slot free, the extension extends nothing (not the leases before the
//!   failing one either), and the one writer connection keeps working: the
//!   next grant takes the seat, and the seat count is never passed (pass).

use floatlm::domain::license::VendorSigningKey;
use floatlm::domain::seats::{Check, GrantRequest, LeaseRef, SeatError};
use floatlm::storage::mysql::MySqlStorage;
use floatlm::storage::{Extension, RenewItem, SeatFailure, Storage};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{def, mysql_wire, record, test_keyring, Kind, TestStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TTL: Duration = Duration::from_secs(60);

fn req(feature: &str, holder: &str, rid: &str) -> GrantRequest {
    testkit::grant_request(feature, holder, rid, TTL)
}

async fn license(st: &dyn Storage, id: &str, feature: &str, seats: u32) {
    st.apply_license(&record(
        &def(id, 1, feature, seats),
        &VendorSigningKey::generate(),
        &test_keyring(),
    ))
    .await
    .unwrap();
}

/// Live leases of `feature` by the database's own clock.
async fn live(st: &dyn Storage, feature: &str) -> Vec<LeaseRef> {
    st.leases()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.feature == feature)
        .map(|l| l.lease)
        .collect()
}

fn item(holder: &str, leases: &[LeaseRef]) -> RenewItem {
    RenewItem {
        holder: holder.into(),
        leases: leases.to_vec(),
    }
}

// ------------------------------------------------------- the lost COMMIT OK

/// A TCP proxy in front of the test MariaDB (plain text, like
/// tests/attack_round3.rs's). When armed, the next `COM_QUERY "COMMIT"` of
/// any connection is forwarded to the server, which runs it; the server's
/// answer is never forwarded and both sides of that connection are closed
/// once the server had time to commit.
struct CommitCut {
    port: u16,
    armed: Arc<AtomicBool>,
    /// Whether the armed COMMIT reaches the server only after floatlm saw
    /// the connection close (its retry then races a transaction still open).
    late: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

impl CommitCut {
    async fn start(upstream: String) -> CommitCut {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let late = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (a, lt, c) = (armed.clone(), late.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let (a, lt, c, up) = (a.clone(), lt.clone(), c.clone(), upstream.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&up).await {
                        cut_pipe(client, server, a, lt, c).await;
                    }
                });
            }
        });
        CommitCut {
            port,
            armed,
            late,
            cuts,
        }
    }

    /// Cuts the next COMMIT; `late`: floatlm sees the close 300 ms before
    /// the server gets the COMMIT.
    fn arm(&self, late: bool) {
        self.late.store(late, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

async fn cut_pipe(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<AtomicBool>,
    late: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let cut = Arc::new(AtomicBool::new(false));
    let cut2 = cut.clone();
    let closed = Arc::new(tokio::sync::Notify::new());
    let closed2 = closed.clone();
    tokio::spawn(async move {
        let mut tmp = vec![0u8; 1 << 16];
        loop {
            let n = tokio::select! {
                r = sr.read(&mut tmp) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
                _ = closed2.notified() => break,
            };
            // After the cut nothing more reaches floatlm: it sees the
            // connection close instead of the COMMIT's OK.
            if cut2.load(Ordering::SeqCst) || cw.write_all(&tmp[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    });
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 1 << 16];
    loop {
        let n = match cr.read(&mut tmp).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        for pkt in mysql_wire::take_packets(&mut buf) {
            let commit = mysql_wire::command(&pkt)
                .is_some_and(|(cmd, body)| cmd == 0x03 && body.eq_ignore_ascii_case(b"COMMIT"))
                && armed.swap(false, Ordering::SeqCst);
            if commit {
                cut.store(true, Ordering::SeqCst);
                cuts.fetch_add(1, Ordering::SeqCst);
                if late.load(Ordering::SeqCst) {
                    // floatlm sees the connection close; the transaction
                    // stays open on the server, its COMMIT still to come.
                    closed.notify_one();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
            if sw.write_all(&pkt).await.is_err() {
                return;
            }
            if commit {
                // The server reads and runs the COMMIT before it sees the
                // connection go.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = sw.shutdown().await;
                return;
            }
        }
    }
    let _ = sw.shutdown().await;
}

/// A migrated MariaDB store, and a second pool on the same database that
/// reaches it through a [`CommitCut`].
async fn cut_store() -> (TestStore, CommitCut, Arc<dyn Storage>) {
    let s = TestStore::new(Kind::Mysql).await;
    let url = s.db.as_ref().unwrap().url.clone();
    let rest = url.strip_prefix("mysql://").unwrap();
    let (userhost, dbname) = rest.split_once('/').unwrap();
    let (user, hostport) = userhost.rsplit_once('@').unwrap();
    let proxy = CommitCut::start(hostport.to_string()).await;
    let via = format!("mysql://{user}@127.0.0.1:{}/{dbname}", proxy.port);
    let cut: Arc<dyn Storage> = Arc::new(MySqlStorage::connect(&via, 4).await.unwrap());
    (s, proxy, cut)
}

/// A batch of grants whose COMMIT committed but whose OK was lost: each
/// request is then granted alone, which replays the committed grant.
async fn batch_commit_cut(late: bool) {
    let (s, proxy, cut) = cut_store().await;
    let st = s.storage.as_ref();
    license(st, "L1", "cc", 2).await;
    let reqs = vec![req("cc", "h", "b-1"), req("cc", "h", "b-2")];
    proxy.arm(late);
    let out = cut.grant_batch(&reqs).await;
    assert_eq!(proxy.cuts(), 1, "the batch's COMMIT was not cut");
    let in_db: BTreeSet<LeaseRef> = live(st, "cc").await.into_iter().collect();
    assert_eq!(in_db.len(), 2, "the batch committed two grants: {in_db:?}");
    let mut answered = BTreeSet::new();
    for (r, o) in reqs.iter().zip(out) {
        let g = o.unwrap_or_else(|e| panic!("{}: {e:?}", r.request_id.as_str()));
        assert!(
            g.replayed,
            "{}: answered as a fresh grant after the batch had committed it",
            r.request_id.as_str()
        );
        assert!(g.promise > Duration::ZERO);
        answered.insert(g.lease);
    }
    assert_eq!(
        answered, in_db,
        "the answers name other leases than the database holds"
    );
    match cut.grant(&req("cc", "h", "b-3")).await {
        Err(SeatFailure::Refused(SeatError::NoSeat { .. })) => {}
        other => panic!("a third seat of two: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_grants_whose_commit_answer_is_lost_replays_its_grants() {
    batch_commit_cut(false).await;
}

/// The same, with the COMMIT reaching the server only after floatlm gave
/// the batch up: each request granted alone waits for the batch's claim of
/// its request id, then replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_grants_whose_commit_is_still_in_flight_replays_its_grants() {
    batch_commit_cut(true).await;
}

/// A lone grant whose COMMIT answer is lost answers an error (never
/// "granted" without knowing); its resend replays the committed lease and
/// takes no other slot.
async fn lone_commit_cut(late: bool) {
    let (s, proxy, cut) = cut_store().await;
    let st = s.storage.as_ref();
    license(st, "L1", "cl", 2).await;
    proxy.arm(late);
    let first = cut.grant(&req("cl", "h", "l-1")).await;
    assert_eq!(proxy.cuts(), 1, "the grant's COMMIT was not cut");
    assert!(
        matches!(first, Err(SeatFailure::Storage(_))),
        "a grant whose commit was not confirmed must not be answered: {first:?}"
    );
    // The resend (its COMMIT may still be on its way when it arrives).
    let again = cut.grant(&req("cl", "h", "l-1")).await.unwrap();
    assert!(again.replayed, "the resend was granted afresh");
    assert_eq!(
        live(st, "cl").await,
        vec![again.lease],
        "the resend took another slot, or named another lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_grant_whose_commit_answer_is_lost_is_replayed_by_its_resend() {
    lone_commit_cut(false).await;
}

/// The same with the COMMIT still in flight when the resend arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_grant_whose_commit_is_still_in_flight_is_replayed_by_its_resend() {
    lone_commit_cut(true).await;
}

/// A batch of releases whose COMMIT answer is lost: each release then runs
/// alone and answers "not live" (the batch released them); the seats are
/// free and a check of either lease says lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_releases_whose_commit_answer_is_lost_leaves_no_lease_half_released() {
    let (s, proxy, cut) = cut_store().await;
    let st = s.storage.as_ref();
    license(st, "L1", "cr", 2).await;
    let a = st.grant(&req("cr", "h", "r-1")).await.unwrap().lease;
    let b = st.grant(&req("cr", "h", "r-2")).await.unwrap().lease;
    proxy.arm(false);
    let out = cut.release_batch(&[("h".into(), a), ("h".into(), b)]).await;
    assert_eq!(proxy.cuts(), 1, "the release batch's COMMIT was not cut");
    for r in &out {
        assert!(
            matches!(r, Ok(None)),
            "each release alone finds its lease released: {out:?}"
        );
    }
    assert!(live(st, "cr").await.is_empty());
    let checks = st.check_batch(&[item("h", &[a, b])]).await.unwrap();
    assert!(checks[0].iter().all(|c| *c == Check::Lost), "{checks:?}");
    // Both seats are free again.
    for i in 0..2 {
        st.grant(&req("cr", "h", &format!("r-again-{i}")))
            .await
            .unwrap();
    }
}

/// An extension whose COMMIT answer is lost answers an error (the heartbeat
/// then answers from its read); the row is extended all the same, so the
/// read's promise is still covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_whose_commit_answer_is_lost_answers_an_error_and_extended() {
    let (s, proxy, cut) = cut_store().await;
    let st = s.storage.as_ref();
    license(st, "L1", "ce", 1).await;
    let g = st.grant(&req("ce", "h", "e-1")).await.unwrap();
    proxy.arm(false);
    let r = cut
        .extend_batch(&[item("h", &[g.lease])], TTL * 2, TTL)
        .await;
    assert_eq!(proxy.cuts(), 1, "the extension's COMMIT was not cut");
    assert!(r.is_err(), "an unconfirmed extension answered {r:?}");
    let Check::Live(after) = st.check_batch(&[item("h", &[g.lease])]).await.unwrap()[0][0].clone()
    else {
        panic!("the lease was lost");
    };
    assert!(
        after.expires_at > g.expires_at,
        "the committed extension is in the row"
    );
}

// ------------------------------------------------- the expiry-boundary race

/// A lease the race knows of: its holder and its expiry as last answered.
type Known = (LeaseRef, String, chrono::DateTime<chrono::Utc>);

/// What one call answered about one lease.
#[derive(Debug, Clone)]
enum Fact {
    /// A grant (new, never replayed here) at this database time.
    Granted(chrono::DateTime<chrono::Utc>),
    /// Extended: held at least `hold` past this database time.
    Extended(chrono::DateTime<chrono::Utc>),
    /// A check read saw it live until this expiry.
    Live(chrono::DateTime<chrono::Utc>),
}

/// Extends every lease it knows of at its recorded expiry (± 3 ms), reads
/// it now and then, while grants through `granter` spin (lone and batched);
/// returns every fact per lease and the grants' leases.
async fn boundary_race(
    extender: Arc<dyn Storage>,
    granter: Arc<dyn Storage>,
    feature: &'static str,
    hold: Duration,
    run_for: Duration,
) -> Vec<(LeaseRef, String, Fact)> {
    let facts: Arc<Mutex<Vec<(LeaseRef, String, Fact)>>> = Arc::default();
    // (lease, holder, expiry as last known)
    let known: Arc<Mutex<Vec<Known>>> = Arc::default();
    let stop = Instant::now() + run_for;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..2usize {
        let (g, facts, known) = (granter.clone(), facts.clone(), known.clone());
        tasks.spawn(async move {
            let mut n = 0usize;
            while Instant::now() < stop && n < 20_000 {
                n += 1;
                let mk = |k: usize| {
                    let holder = format!("g{t}-{n}-{k}");
                    let mut r =
                        testkit::grant_request(feature, &holder, &format!("r{t}-{n}-{k}"), hold);
                    r.promise = hold.saturating_sub(Duration::from_millis(500));
                    r
                };
                let reqs: Vec<GrantRequest> = if n % 3 == 0 {
                    vec![mk(0), mk(1)]
                } else {
                    vec![mk(0)]
                };
                let out = if reqs.len() > 1 {
                    g.grant_batch(&reqs).await
                } else {
                    vec![g.grant(&reqs[0]).await]
                };
                for (r, o) in reqs.iter().zip(out) {
                    match o {
                        Ok(gr) => {
                            assert!(!gr.replayed);
                            facts.lock().unwrap().push((
                                gr.lease,
                                r.holder.clone(),
                                Fact::Granted(gr.granted_at),
                            ));
                            known
                                .lock()
                                .unwrap()
                                .push((gr.lease, r.holder.clone(), gr.expires_at));
                        }
                        Err(SeatFailure::Refused(SeatError::NoSeat { .. })) => {}
                        Err(e) => panic!("grant: {e:?}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }
    {
        let (x, facts, known) = (extender.clone(), facts.clone(), known.clone());
        tasks.spawn(async move {
            let mut rounds = 0usize;
            while Instant::now() < stop && rounds < 50_000 {
                rounds += 1;
                // The lease that expires first, extended right at its expiry.
                let next = {
                    let k = known.lock().unwrap();
                    k.iter().min_by_key(|e| e.2).cloned()
                };
                let Some((lease, holder, exp)) = next else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                let jitter =
                    chrono::Duration::microseconds((rand::random::<u64>() % 6000) as i64 - 3000);
                let at = exp + jitter;
                if let Ok(wait) = (at - chrono::Utc::now()).to_std() {
                    tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
                }
                let ext = x
                    .extend_batch(
                        &[item(&holder, &[lease])],
                        hold,
                        hold.saturating_sub(Duration::from_millis(500)),
                    )
                    .await
                    .unwrap();
                let mut k = known.lock().unwrap();
                k.retain(|e| e.0 != lease);
                match ext[0][0] {
                    Extension::Extended(t) => {
                        facts
                            .lock()
                            .unwrap()
                            .push((lease, holder.clone(), Fact::Extended(t)));
                        // Half of the leases are kept, half left to expire.
                        if rand::random::<bool>() {
                            k.push((lease, holder, t + chrono::Duration::from_std(hold).unwrap()));
                        }
                    }
                    Extension::Lost | Extension::Busy => {}
                }
            }
        });
    }
    {
        let (x, facts, known) = (extender.clone(), facts.clone(), known.clone());
        tasks.spawn(async move {
            let mut rounds = 0usize;
            while Instant::now() < stop && rounds < 50_000 {
                rounds += 1;
                let all: Vec<(LeaseRef, String)> = known
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|e| (e.0, e.1.clone()))
                    .collect();
                if !all.is_empty() {
                    let items: Vec<RenewItem> = all.iter().map(|(l, h)| item(h, &[*l])).collect();
                    let checks = x.check_batch(&items).await.unwrap();
                    let mut f = facts.lock().unwrap();
                    for ((l, h), c) in all.iter().zip(checks) {
                        if let Check::Live(live) = &c[0] {
                            f.push((*l, h.clone(), Fact::Live(live.expires_at)));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }
    while let Some(j) = tasks.join_next().await {
        j.unwrap();
    }
    Arc::try_unwrap(facts).unwrap().into_inner().unwrap()
}

/// Checks the facts: per slot, leases in `lease_gen` order, each granted
/// no sooner than every fact about the one before it allows.
fn audit(facts: &[(LeaseRef, String, Fact)], hold: Duration) -> (usize, usize) {
    let hold = chrono::Duration::from_std(hold).unwrap();
    let mut per_slot: BTreeMap<(i64, i64), BTreeMap<i64, Vec<&Fact>>> = BTreeMap::new();
    for (l, _, f) in facts {
        per_slot
            .entry((l.feature_id, l.slot_no))
            .or_default()
            .entry(l.lease_gen)
            .or_default()
            .push(f);
    }
    let (mut regrants, mut extended) = (0, 0);
    for (slot, gens) in &per_slot {
        let gens: Vec<(&i64, &Vec<&Fact>)> = gens.iter().collect();
        for w in gens.windows(2) {
            let (g0, before) = w[0];
            let (g1, after) = w[1];
            let Some(granted) = after.iter().find_map(|f| match f {
                Fact::Granted(t) => Some(*t),
                _ => None,
            }) else {
                continue;
            };
            regrants += 1;
            for f in before {
                let must_wait = match f {
                    Fact::Granted(t) => *t + hold,
                    Fact::Extended(t) => {
                        extended += 1;
                        *t + hold
                    }
                    Fact::Live(e) => *e,
                };
                assert!(
                    granted >= must_wait,
                    "slot {slot:?}: gen {g1} granted at {granted} while gen {g0} was held until {must_wait} ({f:?})"
                );
            }
        }
    }
    (regrants, extended)
}

async fn expiry_boundary(kind: Kind) {
    let s = TestStore::new(kind).await;
    let granter = match kind {
        Kind::Mysql => s.second_pool().await,
        Kind::Sqlite => s.storage.clone(),
    };
    license(s.storage.as_ref(), "L1", "edge", 3).await;
    let hold = Duration::from_millis(1200);
    let facts = boundary_race(
        s.storage.clone(),
        granter,
        "edge",
        hold,
        Duration::from_secs(8),
    )
    .await;
    let (regrants, extended) = audit(&facts, hold);
    eprintln!(
        "{kind:?}: {} facts, {regrants} slots granted again, {extended} extensions before a re-grant",
        facts.len()
    );
    assert!(regrants >= 5, "the race hardly ran: {regrants} re-grants");
    assert!(live(s.storage.as_ref(), "edge").await.len() <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_at_the_expiry_boundary_never_take_a_slot_an_answer_still_holds_mysql() {
    expiry_boundary(Kind::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_at_the_expiry_boundary_never_take_a_slot_an_answer_still_holds_sqlite() {
    expiry_boundary(Kind::Sqlite).await;
}

// ------------------------------------ SQLite rolls a transaction back itself

/// A grant whose write is rolled back by SQLite itself in the middle of the
/// transaction (`RAISE(ROLLBACK)`, as a full disk or an I/O error may), and
/// an extension of two leases whose second write is: nothing half done is
/// left, and the one writer connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_sqlite_rolled_back_itself_leaves_no_seat_taken_and_the_writer_working() {
    let s = TestStore::new(Kind::Sqlite).await;
    let st = s.storage.as_ref();
    license(st, "L1", "sq", 2).await;
    let db = s.dir.path().join("t.db");
    let raw = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    // The grant's request-id row is written after its slot: failing it
    // rolls back a transaction that already took a slot.
    sqlx::query(
        "CREATE TRIGGER boom_grant BEFORE INSERT ON grant_requests
         WHEN NEW.request_id LIKE 'boom%' BEGIN SELECT RAISE(ROLLBACK, 'database or disk is full'); END",
    )
    .execute(&raw)
    .await
    .unwrap();
    // An extension that reaches the victim's row after extending another.
    sqlx::query(
        "CREATE TRIGGER boom_extend BEFORE UPDATE OF expires_at ON slots
         WHEN OLD.holder = 'victim' AND NEW.expires_at > OLD.expires_at
         BEGIN SELECT RAISE(ROLLBACK, 'disk I/O error'); END",
    )
    .execute(&raw)
    .await
    .unwrap();
    let r = st.grant(&req("sq", "h", "boom-1")).await;
    assert!(matches!(r, Err(SeatFailure::Storage(_))), "{r:?}");
    assert!(
        live(st, "sq").await.is_empty(),
        "a failed grant kept its slot"
    );

    let a = st.grant(&req("sq", "h", "ok-1")).await.unwrap();
    let v = st.grant(&req("sq", "victim", "ok-2")).await.unwrap();
    let before = match &st.check_batch(&[item("h", &[a.lease])]).await.unwrap()[0][0] {
        Check::Live(l) => l.expires_at,
        other => panic!("{other:?}"),
    };
    // Let the database clock move on, so an extension would raise the expiry.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ext = st
        .extend_batch(
            &[item("h", &[a.lease]), item("victim", &[v.lease])],
            TTL * 2,
            TTL,
        )
        .await;
    assert!(ext.is_err(), "{ext:?}");
    let after = match &st.check_batch(&[item("h", &[a.lease])]).await.unwrap()[0][0] {
        Check::Live(l) => l.expires_at,
        other => panic!("{other:?}"),
    };
    assert_eq!(after, before, "half of a failed extension batch was kept");
    // The writer still works: a release, a grant, and the seat count holds.
    assert!(st.release("h", a.lease).await.unwrap().is_some());
    st.grant(&req("sq", "h", "ok-3")).await.unwrap();
    match st.grant(&req("sq", "h", "ok-4")).await {
        Err(SeatFailure::Refused(SeatError::NoSeat { .. })) => {}
        other => panic!("a third seat of two: {other:?}"),
    }
    raw.close().await;
}
