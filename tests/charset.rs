//! A database created `CHARACTER SET latin1` (MariaDB's default before
//! 11.6): migration 0008 converts every table to utf8mb4 at start, so user
//! and host names in any script log in and show in the lease list, on a new
//! latin1 database and on one whose tables an earlier version created
//! latin1 (rows written then keep their text).

use floatlm_client::{AuthInfo, Client, Options};
use sqlx::Connection;
use std::time::Duration;
use testkit::{floatlm_ok, mysql_server_url, DemoServer, TestDb};

/// A database of its own created latin1 (dropped afterwards).
async fn latin1_db() -> TestDb {
    let server = mysql_server_url();
    let mut conn = sqlx::MySqlConnection::connect(&server).await.unwrap();
    let name = format!("floatlm_t_{}", floatlm::crypto::random_hex(6));
    sqlx::query(&format!(
        "CREATE DATABASE `{name}` CHARACTER SET latin1 COLLATE latin1_swedish_ci"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    TestDb {
        url: format!("{server}/{name}"),
        name,
    }
}

/// Checks out `demo` as user 田中 on host dev😀, and finds them in
/// `admin lease list`.
async fn names_in_any_script_log_in(db: &TestDb) {
    let server = DemoServer::start_on(
        Some(db),
        &[],
        &[
            // The earlier version's database has its admin tokens already.
            ("FLOATLM_ADMIN_TOKEN", testkit::CLUSTER_TOKEN),
        ],
    );
    let opts = Options {
        request_timeout: Duration::from_secs(5),
        auth: AuthInfo {
            user: "田中".into(),
            host: "dev😀".into(),
            groups: vec!["設計".into()],
            ..AuthInfo::default()
        },
        ..Options::default()
    };
    let client = Client::connect(&[server.identity.as_str()], opts)
        .await
        .unwrap();
    let seat = client.checkout("demo").await.unwrap();
    let url = format!("http://{}", server.proc.admin);
    let list = floatlm_ok(&[
        "admin",
        "--url",
        &url,
        "--token",
        &server.admin_token,
        "lease",
        "list",
    ]);
    assert!(list.contains("田中@dev😀"), "{list}");
    drop(seat);
    // The columns are utf8mb4 now.
    let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
    let charset: String = sqlx::query_scalar(
        "SELECT CHARACTER_SET_NAME FROM information_schema.COLUMNS
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'slots' AND COLUMN_NAME = 'client_info'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(charset, "utf8mb4");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latin1_database_serves_names_in_any_script() {
    let db = latin1_db().await;
    names_in_any_script_log_in(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_an_earlier_version_made_latin1_are_converted_keeping_their_rows() {
    let db = latin1_db().await;
    // The schema as the versions before 0008 left it: every table latin1.
    let mut before = sqlx::migrate::Migrator::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/mysql"),
    )
    .await
    .unwrap();
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 8)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
    before.run(&pool).await.unwrap();
    let token = |id: &str, name: &str| {
        format!(
            "INSERT INTO admin_tokens (id, name, role, token_hash, created_at)
             VALUES ('{id}', '{name}', 'monitor', REPEAT('{}', 64), NOW(6))",
            &id[..1]
        )
    };
    // Latin-1 text was stored then; anything else was refused.
    sqlx::query(&token("0000000000000001", "Müller"))
        .execute(&pool)
        .await
        .unwrap();
    let refused = sqlx::query(&token("0000000000000002", "田中"))
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("Incorrect string value"),
        "{refused}"
    );
    pool.close().await;

    names_in_any_script_log_in(&db).await;

    let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
    let (name, hex): (String, String) =
        sqlx::query_as("SELECT name, HEX(name) FROM admin_tokens WHERE id = '0000000000000001'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((name.as_str(), hex.as_str()), ("Müller", "4DC3BC6C6C6572"));
    pool.close().await;
}
