//! An instance whose own clock is ten minutes off (libfaketime) grants and
//! expires leases correctly, because only the database clock counts.

use floatlm_client::{Client, ClientError, Options};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testkit::{
    admin_cli, bin, cli_license, cluster_instance, created_credential, wait_for, TestDb,
};

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_instance_grants_and_expires_by_the_database_clock() {
    assert!(
        Path::new(FAKETIME).exists(),
        "libfaketime is not installed: apt-get install -y faketime (scripts/test.sh installs it)"
    );
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pubkey, lic) = cli_license(d, "SKEW", "cad", 1);
    let extra = ["--vendor-key", pubkey.as_str(), "--lease-ttl", "5s"];
    let a = cluster_instance(d, &db, "a", "127.0.0.1:0", &extra, &[]);
    // Ten minutes slow; monotonic time stays real so timers work.
    let skewed = [
        ("LD_PRELOAD", FAKETIME),
        ("FAKETIME", "-10m"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let b = cluster_instance(d, &db, "b", "127.0.0.1:0", &extra, &skewed);
    let admin = admin_cli;
    // b's own clock really is off.
    let status: serde_json::Value =
        serde_json::from_str(&admin(&b, &["--json", "status"])).unwrap();
    let b_started: chrono::DateTime<chrono::Utc> =
        status["started_at"].as_str().unwrap().parse().unwrap();
    let skew = chrono::Utc::now() - b_started;
    assert!(
        skew > chrono::Duration::minutes(9),
        "instance b should run ten minutes slow, skew {skew}"
    );

    admin(&a, &["apply", &lic]);
    let out = admin(&a, &["identity", "create", "--name", "skew"]);
    let cred = created_credential(&out);
    let via_b = format!("{cred}@{}", b.licensing);
    let via_a = format!("{cred}@{}", a.licensing);

    // A lease granted through b is held lease_hold (2 × TTL) after the
    // database's now, not b's.
    let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
    let mut holder = Command::new(bin())
        .args(["checkout", "-s", &via_b, "cad", "--hold", "300"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let remaining: f64 = wait_for("the lease granted through b", Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, f64>(
            "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, NOW(6), expires_at) / 1000000 AS DOUBLE) FROM slots WHERE expires_at > NOW(6)",
        )
        .fetch_optional(&pool)
        .await
        .unwrap()
    })
    .await;
    assert!(
        remaining > 5.0 && remaining <= 10.5,
        "lease ends {remaining} s from the database's now"
    );
    // Through the normal instance the one seat is taken.
    let ca = Client::connect(&[&via_a], Options::default())
        .await
        .unwrap();
    assert!(matches!(
        ca.checkout("cad").await,
        Err(ClientError::NoLicense { .. })
    ));
    // The holder vanishes; its seat frees after lease_hold by the database clock.
    holder.kill().unwrap();
    let _ = holder.wait();
    let seat = wait_for(
        "the vanished holder's seat to free",
        Duration::from_secs(20),
        || async { ca.checkout("cad").await.ok() },
    )
    .await;
    seat.release().await;

    // An identity that expired five minutes ago is refused by b too, though
    // b's own clock says it is still valid.
    let expired_at = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let out = admin(
        &a,
        &[
            "identity",
            "create",
            "--name",
            "old",
            "--expires",
            &expired_at,
        ],
    );
    let old = created_credential(&out);
    match Client::connect(&[format!("{old}@{}", b.licensing)], Options::default()).await {
        Err(ClientError::IdentityRefused { reason, .. }) => {
            assert!(reason.contains("expired"), "{reason}")
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("an expired identity must be refused by the skewed instance too"),
    }
}
