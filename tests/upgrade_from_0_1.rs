//! 0.1 and this version must not serve one database side by side: 0.1
//! answers heartbeats from memory and renews with `expires_at = now + its
//! lease_hold` (no GREATEST), which shortens what this version promised
//! (found by an attacker's rolling-upgrade test against the real 0.1
//! binary). So an instance refuses to start, and to migrate, while a 0.1
//! instance is alive on the database, and says what to do.

use std::time::Duration;
use testkit::{cli_license, cluster_instance, Serve, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_refuses_to_start_beside_a_live_0_1_instance() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (pubkey, _lic) = cli_license(dir.path(), "UPG", "cad", 1);
    let a = cluster_instance(
        dir.path(),
        &db,
        "new-1",
        "127.0.0.1:0",
        &["--vendor-key", &pubkey],
        &[],
    );
    let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
    // A 0.1 instance as it records itself (its columns only).
    sqlx::query(
        "INSERT INTO instances (id, address, admin_address, version, started_at, last_seen)
         VALUES ('old-1', '127.0.0.1:1', '127.0.0.1:2', '0.1.0', NOW(6), NOW(6))",
    )
    .execute(&pool)
    .await
    .unwrap();
    let new_2 = Serve::in_dir(dir.path())
        .data_dir(&dir.path().join("new-2"))
        .mysql(&db)
        .args(&["--instance-id", "new-2", "--vendor-key", &pubkey])
        .env("FLOATLM_ADMIN_TOKEN", testkit::CLUSTER_TOKEN);
    let err = match new_2.spawn() {
        Ok(_) => panic!("an instance started beside a live 0.1 instance"),
        Err(e) => e,
    };
    assert!(
        err.contains("old-1 (0.1.0)") && err.contains("stop every 0.1 instance"),
        "the refusal names the old instance and says what to do: {err}"
    );
    // Once the 0.1 instance is gone (silent for 3 cluster heartbeats, 15 s by default), it starts.
    sqlx::query("UPDATE instances SET last_seen = NOW(6) - INTERVAL 60 SECOND WHERE id = 'old-1'")
        .execute(&pool)
        .await
        .unwrap();
    let b = new_2.start();
    drop((a, b));
    let _ = Duration::ZERO;
}
