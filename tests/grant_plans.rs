//! A grant reads a handful of rows, however many seats its feature has.
//!
//! Grants find free slots and look for retiring ones through the pick index
//! (feature_id, state, expires_at). The pool's connections run with
//! `eq_range_index_dive_limit = 1`, so MariaDB plans `state = 1 AND
//! feature_id IN (…)` from index statistics alone, which cannot see that
//! retiring slots are rare: it chose the primary key (or a full index scan)
//! and every grant batch read all of its feature's slots to find none
//! retiring. In the bench (a 100,000-seat feature) checkouts fell from about
//! 3,000/s to about 900/s (docs/benchmarks.md). Counted with the server's
//! `Handler_read_*` counters on a MariaDB of the test's own, so no other
//! client reads rows meanwhile (the shared server on 3306 has other tests).

use floatlm::domain::license::VendorSigningKey;
use floatlm::domain::seats::{GrantRequest, RequestId};
use floatlm::storage::mysql::MySqlStorage;
use floatlm::storage::Storage;
use sqlx::Connection;
use std::sync::Arc;
use std::time::Duration;
use testkit::own_mariadb::OwnMariaDb;
use testkit::{def, record, test_keyring};

/// Large enough that reading every slot stands out from a grant's own rows.
const SEATS: u32 = 20_000;
/// Rows a grant may read: its feature row, the slots it takes, its request
/// row and the usage trigger's lookups, with room to spare; far below SEATS.
const MOST_ROWS: u64 = 1_000;

fn req(rid: &str) -> GrantRequest {
    GrantRequest {
        feature: "big".into(),
        request_id: RequestId::new(rid).unwrap(),
        holder: "holder-1".into(),
        client_info: "plans".into(),
        hold: Duration::from_secs(60),
        promise: Duration::from_secs(60),
        instance_id: "i-plans".into(),
    }
}

/// Rows the server has read from its tables so far: the sum of its
/// `Handler_read_*` counters (MariaDB 10.11 has no `Innodb_rows_read`).
async fn rows_read(server: &str) -> u64 {
    let mut c = sqlx::MySqlConnection::connect(server).await.unwrap();
    let v: Vec<(String, String)> = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Handler_read%'")
        .fetch_all(&mut c)
        .await
        .unwrap();
    let _ = c.close().await;
    assert!(!v.is_empty(), "the server reports no Handler_read counters");
    v.iter().map(|(_, n)| n.parse::<u64>().unwrap()).sum()
}

/// Rows read by `op`, less what reading the counters itself costs (SHOW
/// STATUS reads rows of its own).
async fn rows_read_by<F: std::future::Future<Output = ()>>(server: &str, op: F) -> u64 {
    let a = rows_read(server).await;
    let b = rows_read(server).await;
    op.await;
    let c = rows_read(server).await;
    (c - b).saturating_sub(b - a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_read_few_rows_of_a_large_feature() {
    let db = OwnMariaDb::start();
    let url = db.create_database();
    let st: Arc<dyn Storage> = Arc::new(MySqlStorage::connect(&url, 4).await.unwrap());
    st.migrate().await.unwrap();
    let v = VendorSigningKey::generate();
    st.apply_license(&record(&def("BIG", 1, "big", SEATS), &v, &test_keyring()))
        .await
        .unwrap();
    // Statistics as a server that has run a while has them (InnoDB would
    // recompute them in the background after this many new rows anyway).
    let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
    sqlx::query("ANALYZE TABLE slots")
        .execute(&mut c)
        .await
        .unwrap();
    let _ = c.close().await;
    // Some seats held, as in a running cluster.
    for r in st.grant_batch(&[req("warm-0"), req("warm-1")]).await {
        r.unwrap();
    }

    let server = db.url();
    let batch: Vec<GrantRequest> = (0..16).map(|i| req(&format!("batch-{i}"))).collect();
    let batched = rows_read_by(&server, async {
        for r in st.grant_batch(&batch).await {
            r.unwrap();
        }
    })
    .await;
    let alone = rows_read_by(&server, async {
        st.grant(&req("alone")).await.unwrap();
    })
    .await;
    println!("rows read: {batched} by a batch of 16 grants, {alone} by one grant");

    assert!(
        batched <= MOST_ROWS && alone <= MOST_ROWS,
        "a batch of 16 grants read {batched} rows and one grant {alone} rows of a feature of \
         {SEATS} seats (at most {MOST_ROWS} expected): a query on slots by state no longer uses \
         the pick index (src/storage/mysql/seats.rs)"
    );
}
