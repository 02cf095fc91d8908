//! An instance frozen (SIGSTOP: a paused VM or container, a debugger) in the
//! middle of a seat transaction keeps its row locks for as long as it is
//! frozen: MariaDB keeps an idle open transaction until `wait_timeout`
//! (8 h by default), and floatlm sets no idle-transaction or statement
//! timeout on its sessions. Grants elsewhere pick slots with `SKIP LOCKED`,
//! so the locked slot is skipped: with one seat, every other instance
//! answers "all seats in use" long after the lease that was on it (if any)
//! expired by the database's own rows — "No sweeper has to run for seats to
//! come back" does not hold while any instance is frozen.

mod common;

use common::promise::{Findings, InstanceSpec, PromiseCluster, Recorder};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let db = sqlx::MySqlPool::connect(&cl.db.url).await.unwrap();
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
            eprintln!("x frozen holding the slot's lock after {} attempt(s)", attempt + 1);
            caught = true;
            break;
        }
        x_proc.signal(libc::SIGCONT);
    }
    assert!(caught, "setup: never caught x inside a seat transaction");
    let row: (Option<String>, Option<chrono::NaiveDateTime>, chrono::NaiveDateTime) =
        sqlx::query_as("SELECT holder, expires_at, NOW(6) FROM slots WHERE feature_id = 1 AND slot_no = 0")
            .fetch_one(&db)
            .await
            .unwrap();
    eprintln!("committed row while x is frozen: holder {:?}, expires_at {:?}, now {}", row.0, row.1, row.2);

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
