//! [`BackupStore`] on MySQL / MariaDB: a snapshot is one `REPEATABLE READ`
//! read-only transaction with a consistent snapshot (the pool's sessions run
//! at READ COMMITTED, which would let tables be read at different moments);
//! a restore is one transaction; claims are single statements.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::{Executor, MySql, QueryBuilder, Row};
use std::time::Duration;

use super::{MySqlStorage, Time};
use crate::storage::backup::{
    insert_sql, select_sql, BackupClaim, BackupDone, BackupStore, Cell, ColType, Snapshot,
    TableRows, END_RESTORED_LEASES, INSERT_CHUNK, TABLES,
};
use crate::storage::{is_missing_table, micros, ClaimRecord, Result};

fn cell(row: &sqlx::mysql::MySqlRow, i: usize, ty: ColType) -> Result<Cell> {
    Ok(match ty {
        ColType::Int => row.try_get::<Option<i64>, _>(i)?.map(Cell::Int),
        ColType::Text => row.try_get::<Option<String>, _>(i)?.map(Cell::Text),
        ColType::Bytes => row.try_get::<Option<Vec<u8>>, _>(i)?.map(Cell::Bytes),
        ColType::Time => row
            .try_get::<Option<NaiveDateTime>, _>(i)?
            .map(|t| Cell::Time(t.and_utc())),
    }
    .unwrap_or(Cell::Null))
}

#[async_trait]
impl BackupStore for MySqlStorage {
    async fn snapshot(&self) -> Result<Snapshot> {
        let mut conn = self.pool.acquire().await?;
        let read = async {
            // Applies to the next transaction of this session only.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .await?;
            conn.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await?;
            let now: NaiveDateTime = sqlx::query_scalar("SELECT NOW(6)")
                .fetch_one(&mut *conn)
                .await?;
            let mut tables = Vec::with_capacity(TABLES.len());
            for t in TABLES {
                let rows = sqlx::query(&select_sql(t, |c| format!("CAST({c} AS SIGNED)")))
                    .fetch_all(&mut *conn)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let mut cells = Vec::with_capacity(t.columns.len());
                    for (i, c) in t.columns.iter().enumerate() {
                        cells.push(cell(r, i, c.ty)?);
                    }
                    out.push(cells);
                }
                tables.push(TableRows {
                    table: t,
                    rows: out,
                });
            }
            let longest: i64 = sqlx::query_scalar(
                "SELECT CAST(COALESCE(MAX(lease_ttl_ms), 0) AS SIGNED) FROM instances",
            )
            .fetch_one(&mut *conn)
            .await?;
            conn.execute("COMMIT").await?;
            Ok(Snapshot {
                taken_at: now.and_utc(),
                longest_lease_ttl_ms: longest,
                tables,
            })
        }
        .await;
        if read.is_err() {
            // The transaction (or the isolation level set for it) may still
            // be open on this connection: never hand it to someone else.
            conn.close_on_drop();
        }
        read
    }

    async fn restorable_rows(&self) -> Result<Vec<(&'static str, i64)>> {
        let mut out = Vec::with_capacity(TABLES.len());
        for t in TABLES {
            let n = match sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {}", t.name))
                .fetch_one(&self.pool)
                .await
            {
                Ok(n) => n,
                Err(e) if is_missing_table(&e) => 0,
                Err(e) => return Err(e.into()),
            };
            out.push((t.name, n));
        }
        Ok(out)
    }

    async fn restore(&self, tables: &[TableRows], hold: Duration) -> Result<DateTime<Utc>> {
        let mut tx = self.pool.begin().await?;
        tx.execute("DELETE FROM grant_requests").await?;
        for t in TABLES.iter().rev() {
            tx.execute(format!("DELETE FROM {}", t.name).as_str())
                .await?;
        }
        for t in tables {
            for chunk in t.rows.chunks(INSERT_CHUNK) {
                let mut q = QueryBuilder::<MySql>::new(insert_sql(t.table));
                q.push_values(chunk, |mut b, row| {
                    for c in row {
                        match c {
                            Cell::Null => b.push_bind(None::<i64>),
                            Cell::Int(i) => b.push_bind(*i),
                            Cell::Text(s) => b.push_bind(s.clone()),
                            Cell::Bytes(v) => b.push_bind(v.clone()),
                            Cell::Time(t) => b.push_bind(t.naive_utc()),
                        };
                    }
                });
                q.build().execute(&mut *tx).await?;
            }
        }
        tx.execute(END_RESTORED_LEASES.replace("{now}", "NOW(6)").as_str())
            .await?;
        let until: NaiveDateTime = sqlx::query_scalar("SELECT NOW(6) + INTERVAL ? MICROSECOND")
            .bind(micros(hold))
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE slots SET holder = NULL, client_info = NULL, request_id = NULL, granted_by = NULL,
                granted_at = NULL, lease_nonce = 0, promise_ms = 0, expires_at = ?
             WHERE state IN (0, 1)",
        )
        .bind(until)
        .execute(&mut *tx)
        .await?;
        tx.execute("UPDATE identity_revision SET revision = revision + 1 WHERE id = 1")
            .await?;
        tx.commit().await?;
        Ok(until.and_utc())
    }

    async fn claim_backup(
        &self,
        slot: i64,
        instance: &str,
        down_after: Duration,
        stale_after: Duration,
    ) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT IGNORE INTO backup_claims (slot, instance_id, claimed_at) VALUES (?, ?, NOW(6))",
        )
        .bind(slot)
        .bind(instance)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        if inserted {
            return Ok(true);
        }
        // One conditional UPDATE: of instances noticing the same abandoned
        // claim at once, exactly one matches it.
        let taken = sqlx::query(
            "UPDATE backup_claims c SET c.instance_id = ?, c.claimed_at = NOW(6), c.finished_at = NULL,
                c.outcome = NULL, c.file = NULL, c.bytes = NULL, c.digest = NULL, c.error = NULL
             WHERE c.slot = ? AND (
                (c.finished_at IS NULL AND (c.claimed_at < NOW(6) - INTERVAL ? MICROSECOND OR (
                    c.claimed_at < NOW(6) - INTERVAL ? MICROSECOND AND NOT EXISTS (
                    SELECT 1 FROM instances i
                    WHERE i.id = c.instance_id AND i.last_seen > NOW(6) - INTERVAL ? MICROSECOND))))
                OR (c.outcome = 'failed' AND c.finished_at < NOW(6) - INTERVAL ? MICROSECOND))",
        )
        .bind(instance)
        .bind(slot)
        .bind(micros(stale_after))
        .bind(micros(down_after))
        .bind(micros(down_after))
        .bind(micros(stale_after))
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        Ok(taken)
    }

    async fn finish_backup(&self, slot: i64, instance: &str, done: &BackupDone) -> Result<()> {
        sqlx::query(
            "UPDATE backup_claims SET finished_at = NOW(6), outcome = ?, file = ?, bytes = ?, digest = ?, error = ?
             WHERE slot = ? AND instance_id = ?",
        )
        .bind(if done.ok { "ok" } else { "failed" })
        .bind(&done.file)
        .bind(done.bytes)
        .bind(&done.digest)
        .bind(done.error.as_deref().map(|e| e.chars().take(1000).collect::<String>()))
        .bind(slot)
        .bind(instance)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn backup_claims(&self, limit: i64) -> Result<Vec<BackupClaim>> {
        let rows: Vec<ClaimRecord<Time>> = sqlx::query_as(
            "SELECT slot, instance_id, claimed_at, finished_at, outcome, file, bytes, digest, error
             FROM backup_claims ORDER BY slot DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(BackupClaim::from).collect())
    }

    async fn prune_backup_claims(&self, below: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM backup_claims WHERE slot < ?")
            .bind(below)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }
}
