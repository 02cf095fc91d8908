//! Baselines measured in the same run: what the database and NGINX do on
//! their own, so every floatlm figure can be read as a ratio.

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{ConnectOptions, Executor};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::load::{closed_loop, Stats};
use crate::procs::CpuSplit;

const ROWS: i64 = 10_000;

/// A database for one run, dropped at the end.
pub struct TempDb {
    server: MySqlPool,
    pub name: String,
    pub url: String,
}

impl TempDb {
    pub async fn create(server_url: &str, prefix: &str) -> anyhow::Result<TempDb> {
        let opts = MySqlConnectOptions::from_str(server_url)?.disable_statement_logging();
        let server = MySqlPoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach MariaDB at {server_url}: {e} (start it, or set FLOATLM_BENCH_MYSQL)"))?;
        let name = format!("{prefix}_{:08x}", rand::random::<u32>());
        server
            .execute(format!("CREATE DATABASE `{name}`").as_str())
            .await?;
        let url = format!("{}/{name}", server_url.trim_end_matches('/'));
        Ok(TempDb { server, name, url })
    }

    /// Runs one statement in this database, on a connection of its own.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        use sqlx::Connection;
        let opts = MySqlConnectOptions::from_str(&self.url)?.disable_statement_logging();
        let mut conn = sqlx::MySqlConnection::connect_with(&opts).await?;
        conn.execute(sql)
            .await
            .map_err(|e| anyhow::anyhow!("{sql} in {}: {e}", self.name))?;
        conn.close().await?;
        Ok(())
    }

    pub async fn drop_now(self) {
        let _ = self
            .server
            .execute(format!("DROP DATABASE IF EXISTS `{}`", self.name).as_str())
            .await;
    }
}

/// One seat transaction per operation, written plainly with sqlx:
/// BEGIN; SELECT … FOR UPDATE; UPDATE; COMMIT on a slot table, at READ
/// COMMITTED like floatlm, over random rows (no lock contention).
pub async fn db_transactions(
    server_url: &str,
    workers: usize,
    duration: Duration,
) -> anyhow::Result<(Stats, CpuSplit)> {
    let db = TempDb::create(server_url, "floatlm_bench_raw").await?;
    let opts = MySqlConnectOptions::from_str(&db.url)?.disable_statement_logging();
    let pool = MySqlPoolOptions::new()
        .max_connections(workers as u32)
        .min_connections(workers as u32)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                Ok(())
            })
        })
        .connect_with(opts)
        .await?;
    pool.execute(
        "CREATE TABLE slots (id INT NOT NULL PRIMARY KEY, holder VARCHAR(64) NULL,
         lease_gen BIGINT NOT NULL DEFAULT 0, expires_at DATETIME(6) NULL) ENGINE=InnoDB",
    )
    .await?;
    for chunk in (0..ROWS).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<String> = chunk.iter().map(|i| format!("({i})")).collect();
        pool.execute(format!("INSERT INTO slots (id) VALUES {}", values.join(",")).as_str())
            .await?;
    }
    let pool = Arc::new(pool);
    let p = pool.clone();
    let cpu = CpuSplit::sample(&[]);
    let stats = closed_loop(workers, duration, u64::MAX, move |w, _| {
        let pool = p.clone();
        async move {
            let id = rand::random::<u32>() as i64 % ROWS;
            let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
            let _gen: i64 =
                sqlx::query_scalar("SELECT lease_gen FROM slots WHERE id = ? FOR UPDATE")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?;
            sqlx::query(
                "UPDATE slots SET holder = ?, lease_gen = lease_gen + 1,
                 expires_at = NOW(6) + INTERVAL 60 SECOND WHERE id = ?",
            )
            .bind(format!("worker-{w}"))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())
        }
    })
    .await;
    let cpu = CpuSplit::sample(&[]).cores_since(&cpu, stats.seconds);
    pool.close().await;
    db.drop_now().await;
    Ok((stats, cpu))
}

/// NGINX with the shipped consistent-hash configuration in front of three
/// trivial upstreams: POSTs of an envelope-sized body, answered with 80 bytes.
pub async fn nginx_proxy(
    shipped_conf: &std::path::Path,
    dir: &std::path::Path,
    http: &reqwest::Client,
    workers: usize,
    duration: Duration,
) -> anyhow::Result<(Stats, CpuSplit)> {
    let mut upstreams = Vec::new();
    for _ in 0..3 {
        upstreams.push(crate::procs::trivial_upstream().await?);
    }
    let nginx = crate::procs::start_nginx(shipped_conf, &upstreams, dir)?;
    let url = format!("http://{}/sentinel/ldk/v1/request", nginx.address);
    let ids: Arc<Vec<String>> =
        Arc::new((0..workers).map(|_| crate::vclient::client_id()).collect());
    let http = http.clone();
    let cpu = CpuSplit::sample(&[]);
    let stats = closed_loop(workers, duration, u64::MAX, move |w, _| {
        let (http, url, ids) = (http.clone(), url.clone(), ids.clone());
        async move {
            let r = http
                .post(url)
                .header(floatlm_protocol::HEADER_INSTANCE, &ids[w])
                .body(vec![1u8; 120])
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("HTTP {}", r.status()));
            }
            r.bytes().await.map(|_| ()).map_err(|e| e.to_string())
        }
    })
    .await;
    let cpu = CpuSplit::sample(&[]).cores_since(&cpu, stats.seconds);
    drop(nginx);
    Ok((stats, cpu))
}
