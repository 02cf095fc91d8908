//! An instance frozen (SIGSTOP: a paused VM or container, a debugger) in the
//! middle of a seat transaction keeps its row locks for as long as it is
//! frozen: MariaDB keeps an idle open transaction until `wait_timeout`
//! (8 h by default), and floatlm sets no idle-transaction or statement
//! timeout on its sessions. Grants elsewhere pick slots with `SKIP LOCKED`,
//! so the locked slot is skipped: with one seat, every other instance
//! answers "all seats in use" long after the lease that was on it (if any)
//! expired by the database's own rows — "No sweeper has to run for seats to
//! come back" does not hold while any instance is frozen.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::promise::{Findings, InstanceSpec, PromiseCluster, Recorder};

/// Whether slot (feature 1, slot 0) is locked by another transaction.
async fn slot_locked(db: &sqlx::MySqlPool) -> bool {
    let mut tx = db.begin().await.unwrap();
    let n: Vec<(i64,)> = sqlx::query_as(
        "SELECT CAST(slot_no AS SIGNED) FROM slots WHERE feature_id = 1 AND slot_no = 0 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    n.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_instance_keeps_a_seat_from_every_other_instance() {
    let cl = PromiseCluster::start(
        &[
            InstanceSpec::new("x", "5s", "5s"),
            InstanceSpec::new("y", "5s", "5s"),
        ],
        &[("cad", 1)],
        2,
    )
    .await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let (x, y) = (cl.targets[0].clone(), cl.targets[1].clone());
    let db = sqlx::MySqlPool::connect(&cl.db().url).await.unwrap();
    let mut f = Findings::new();

    // L keeps instance x busy with seat transactions on the only slot.
    let stop = Arc::new(AtomicBool::new(false));
    let l = Arc::new(cl.client(&rec, "L", 0));
    let busy = {
        let (l, x, stop) = (l.clone(), x.clone(), stop.clone());
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let g = l.login(&x, "cad").await;
                if let Some(lease) = g.granted().map(String::from) {
                    l.heartbeat(&x, std::slice::from_ref(&lease)).await;
                    l.logout(&x, &lease).await;
                }
            }
        })
    };

    // Freeze x until it is caught holding the slot's row lock.
    let x_proc = &cl.servers[0];
    let mut caught = false;
    for attempt in 0..200 {
        tokio::time::sleep(Duration::from_millis(5 + (attempt * 7) % 40)).await;
        x_proc.signal(libc::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if slot_locked(&db).await {
            eprintln!(
                "x frozen holding the slot's lock after {} attempt(s)",
                attempt + 1
            );
            caught = true;
            break;
        }
        x_proc.signal(libc::SIGCONT);
    }
    assert!(caught, "setup: never caught x inside a seat transaction");
    let row: (
        Option<String>,
        Option<chrono::NaiveDateTime>,
        chrono::NaiveDateTime,
    ) = sqlx::query_as(
        "SELECT holder, expires_at, NOW(6) FROM slots WHERE feature_id = 1 AND slot_no = 0",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    eprintln!(
        "committed row while x is frozen: holder {:?}, expires_at {:?}, now {}",
        row.0, row.1, row.2
    );

    // Wait past the committed expiry (lease_hold 5 s), plus the margin.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let d = cl.client(&rec, "D", 1);
    let mut answers = Vec::new();
    let until = Instant::now() + Duration::from_secs(4);
    let mut got = false;
    while Instant::now() < until {
        let r = d.login(&y, "cad").await;
        got = r.granted().is_some();
        answers.push(r.line(t0));
        if got {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let still_locked = slot_locked(&db).await;
    f.expect(
        got,
        format!(
            "x has been frozen for 7 s past the committed expiry of the only seat (lease_hold 5 s); y must grant it, \
             but it is still locked by x's open transaction ({still_locked}) and y answers:\n    {}",
            answers.join("\n    ")
        ),
    );
    x_proc.signal(libc::SIGCONT);
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(10), busy).await;
    f.finish(&rec, &cl.seats);
}

/// Whether slot (1, `slot`) is locked by another transaction.
async fn row_locked(db: &sqlx::MySqlPool, slot: i64) -> bool {
    let mut tx = db.begin().await.unwrap();
    let n: Vec<(i64,)> = sqlx::query_as(
        "SELECT CAST(slot_no AS SIGNED) FROM slots WHERE feature_id = 1 AND slot_no = ? FOR UPDATE SKIP LOCKED",
    )
    .bind(slot)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    n.is_empty()
}

/// x is frozen inside a background extension of K's lease k (it holds k's
/// row lock). K's heartbeats of k through y queue k's extension on y; each
/// waits for the row lock (innodb_lock_wait_timeout, 50 s, then retried up
/// to 8 times), and y has one background-extension worker, two
/// urgent-extension workers and one release worker. So M — whose lease m
/// has nothing to do with x or k — gets no answer from y to its heartbeats
/// or its logout: M loses a healthy seat because another instance froze.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_instance_stalls_other_clients_heartbeats_on_a_healthy_instance() {
    let cl = PromiseCluster::start(
        &[
            InstanceSpec::new("x", "5s", "5s"),
            InstanceSpec::new("y", "5s", "5s"),
        ],
        &[("cad", 2)],
        2,
    )
    .await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let (x, y) = (cl.targets[0].clone(), cl.targets[1].clone());
    let db = sqlx::MySqlPool::connect(&cl.db().url).await.unwrap();
    let k = Arc::new(cl.client(&rec, "K", 0));
    let m = Arc::new(cl.client(&rec, "M", 1));
    let mut f = Findings::new();

    let kl = k
        .login(&x, "cad")
        .await
        .granted()
        .expect("setup: K's grant")
        .to_string();
    let k_slot: i64 = kl.split('.').nth(1).unwrap().parse().unwrap();
    let ml = m
        .login(&y, "cad")
        .await
        .granted()
        .expect("setup: M's grant")
        .to_string();

    // K heartbeats through x back to back: x extends k in the background
    // (lease_hold = lease_ttl, so every heartbeat queues one).
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (k, x, kl, stop) = (k.clone(), x.clone(), kl.clone(), stop.clone());
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                k.heartbeat(&x, std::slice::from_ref(&kl)).await;
            }
        })
    };
    // M heartbeats through y meanwhile, as its library does (every third of
    // the TTL), until the freeze is caught.
    let x_proc = &cl.servers[0];
    let mut caught = false;
    let mut last_m = Instant::now();
    for attempt in 0..300 {
        if last_m.elapsed() > Duration::from_millis(1500) {
            m.heartbeat(&y, std::slice::from_ref(&ml)).await;
            last_m = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(3 + (attempt * 7) % 30)).await;
        x_proc.signal(libc::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(200)).await;
        if row_locked(&db, k_slot).await {
            eprintln!(
                "x frozen holding k's row lock after {} attempt(s)",
                attempt + 1
            );
            caught = true;
            break;
        }
        x_proc.signal(libc::SIGCONT);
    }
    assert!(caught, "setup: never caught x inside an extension of k");
    let m_hb = m.heartbeat(&y, std::slice::from_ref(&ml)).await;
    eprintln!("M right after the freeze: {}", m_hb.line(t0));

    // K keeps heartbeating k through y (its client fails over to y).
    let k_task = {
        let (k, y, kl) = (k.clone(), y.clone(), kl.clone());
        tokio::spawn(async move {
            let mut hs = Vec::new();
            for _ in 0..8 {
                let (k, y, kl) = (k.clone(), y.clone(), kl.clone());
                hs.push(tokio::spawn(async move {
                    k.heartbeat(&y, std::slice::from_ref(&kl)).await
                }));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            for h in hs {
                let _ = h.await;
            }
        })
    };
    // M heartbeats every 1.5 s for 9 s; every answer must say alive.
    let mut m_answers = Vec::new();
    let mut m_ok = true;
    let until = Instant::now() + Duration::from_secs(9);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let h = m.heartbeat(&y, std::slice::from_ref(&ml)).await;
        m_ok &= h.alive(&ml) == Some(true);
        m_answers.push(h.line(t0));
    }
    let out = m.logout(&y, &ml).await;
    f.expect(
        m_ok,
        format!(
            "M's lease {ml} is healthy and y is healthy; x froze holding another lease's row. M's heartbeats through y:\n    {}",
            m_answers.join("\n    ")
        ),
    );
    f.expect(
        out.released().is_some(),
        format!("M's logout through y must be answered: {}", out.line(t0)),
    );
    x_proc.signal(libc::SIGCONT);
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(10), busy).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), k_task).await;
    f.finish(&rec, &cl.seats);
}
