//! The fault-test harness itself: a MariaDB server of the test's own starts,
//! takes a database, dies by SIGKILL, stalls on SIGSTOP, comes back on the
//! same port with its data, and leaves nothing behind.

use sqlx::Connection;
use std::time::{Duration, Instant};
use testkit::own_mariadb::OwnMariaDb;

async fn connect(url: &str) -> Result<sqlx::MySqlConnection, String> {
    match tokio::time::timeout(Duration::from_secs(2), sqlx::MySqlConnection::connect(url)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_mariadb_starts_dies_stalls_and_restarts_with_its_data() {
    let began = Instant::now();
    let mut db = OwnMariaDb::start();
    let started = began.elapsed();
    assert_ne!(db.port(), 3306, "never the shared server's port");
    let dir = db.root_dir().to_path_buf();
    let pid = db.pid().unwrap();

    let url = db.create_database();
    assert!(url.starts_with(&db.url()), "{url}");
    let mut c = connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE t (v INT) ENGINE=InnoDB")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (42)")
        .execute(&mut c)
        .await
        .unwrap();

    // SIGKILL: the open connection breaks, new ones are refused at once.
    db.kill();
    assert!(db.pid().is_none());
    assert!(sqlx::query("SELECT 1").execute(&mut c).await.is_err());
    let t = Instant::now();
    let err = connect(&url).await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(1) && err.contains("refused"),
        "a killed server refuses connections at once: {err} after {:?}",
        t.elapsed()
    );

    // Back on the same port, with the committed row.
    let restarted = db.restart();
    let mut c = connect(&url).await.unwrap();
    let v: i32 = sqlx::query_scalar("SELECT v FROM t")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 42);

    // SIGSTOP: the port still accepts TCP, but nothing answers.
    db.stop();
    let stalled = tokio::time::timeout(
        Duration::from_millis(500),
        sqlx::query("SELECT 1").execute(&mut c),
    )
    .await;
    assert!(stalled.is_err(), "a stopped server answers nothing");
    db.resume();
    // The stalled query was abandoned mid-flight; a fresh connection works.
    drop(c);
    let mut c = connect(&url).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(one, 1);
    eprintln!("start {started:?}, restart after SIGKILL {restarted:?}");

    // Drop kills the server (stopped or not) and removes its directory.
    let pid2 = db.pid().unwrap();
    assert_ne!(pid, pid2);
    db.stop();
    drop(db);
    assert!(!dir.exists(), "{} removed", dir.display());
    let alive = unsafe { libc::kill(pid2 as i32, 0) } == 0;
    assert!(!alive, "mariadbd {pid2} is gone");
}
