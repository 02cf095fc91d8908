//! [`BackupStore`] on SQLite: snapshots on a reader connection (one WAL
//! read transaction), restores and claims on the one writer connection.
//! Times are INTEGER microseconds, as everywhere in this backend.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row, Sqlite};
use std::time::Duration;

use super::{SqliteStorage, Time};
use crate::storage::backup::{
    insert_sql, select_sql, BackupClaim, BackupDone, BackupStore, Cell, ColType, Snapshot,
    TableRows, END_RESTORED_LEASES, INSERT_CHUNK, TABLES,
};
use crate::storage::{is_missing_table, micros, ClaimRecord, Result};

const NOW_SQL: &str = "SELECT CAST(unixepoch('subsec') * 1000000 AS INTEGER)";

fn utc(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn cell(row: &sqlx::sqlite::SqliteRow, i: usize, ty: ColType) -> Result<Cell> {
    Ok(match ty {
        ColType::Int => row.try_get::<Option<i64>, _>(i)?.map(Cell::Int),
        ColType::Text => row.try_get::<Option<String>, _>(i)?.map(Cell::Text),
        ColType::Bytes => row.try_get::<Option<Vec<u8>>, _>(i)?.map(Cell::Bytes),
        ColType::Time => row
            .try_get::<Option<i64>, _>(i)?
            .map(|t| Cell::Time(utc(t))),
    }
    .unwrap_or(Cell::Null))
}

#[async_trait]
impl BackupStore for SqliteStorage {
    async fn snapshot(&self) -> Result<Snapshot> {
        // One read transaction: every SELECT sees the same WAL snapshot.
        let mut tx = self.reader.begin().await?;
        let now: i64 = sqlx::query_scalar(NOW_SQL).fetch_one(&mut *tx).await?;
        let mut tables = Vec::with_capacity(TABLES.len());
        for t in TABLES {
            let rows = sqlx::query(&select_sql(t, str::to_string))
                .fetch_all(&mut *tx)
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
            "SELECT CAST(COALESCE(MAX(lease_ttl_ms), 0) AS INTEGER) FROM instances",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Snapshot {
            taken_at: utc(now),
            longest_lease_ttl_ms: longest,
            tables,
        })
    }

    async fn restorable_rows(&self) -> Result<Vec<(&'static str, i64)>> {
        let mut out = Vec::with_capacity(TABLES.len());
        for t in TABLES {
            let n = match sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {}", t.name))
                .fetch_one(&self.writer)
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM grant_requests")
            .execute(&mut *tx)
            .await?;
        for t in TABLES.iter().rev() {
            sqlx::query(&format!("DELETE FROM {}", t.name))
                .execute(&mut *tx)
                .await?;
        }
        for t in tables {
            for chunk in t.rows.chunks(INSERT_CHUNK) {
                let mut q = QueryBuilder::<Sqlite>::new(insert_sql(t.table));
                q.push_values(chunk, |mut b, row| {
                    for c in row {
                        match c {
                            Cell::Null => b.push_bind(None::<i64>),
                            Cell::Int(i) => b.push_bind(*i),
                            Cell::Text(s) => b.push_bind(s.clone()),
                            Cell::Bytes(v) => b.push_bind(v.clone()),
                            Cell::Time(t) => b.push_bind(t.timestamp_micros()),
                        };
                    }
                });
                q.build().execute(&mut *tx).await?;
            }
        }
        let now: i64 = sqlx::query_scalar(NOW_SQL).fetch_one(&mut *tx).await?;
        sqlx::query(&END_RESTORED_LEASES.replace("{now}", "?"))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let until = now.saturating_add(micros(hold));
        sqlx::query(
            "UPDATE slots SET holder = NULL, client_info = NULL, request_id = NULL, granted_by = NULL,
                granted_at = NULL, lease_nonce = 0, promise_ms = 0, expires_at = ?
             WHERE state IN (0, 1)",
        )
        .bind(until)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE identity_revision SET revision = revision + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(utc(until))
    }

    async fn claim_backup(
        &self,
        slot: i64,
        instance: &str,
        down_after: Duration,
        stale_after: Duration,
    ) -> Result<bool> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let now: i64 = sqlx::query_scalar(NOW_SQL).fetch_one(&mut *tx).await?;
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO backup_claims (slot, instance_id, claimed_at) VALUES (?, ?, ?)",
        )
        .bind(slot)
        .bind(instance)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let claimed = inserted
            || sqlx::query(
                "UPDATE backup_claims SET instance_id = ?1, claimed_at = ?2, finished_at = NULL,
                    outcome = NULL, file = NULL, bytes = NULL, digest = NULL, error = NULL
                 WHERE slot = ?3 AND (
                    (finished_at IS NULL AND (claimed_at < ?2 - ?4 OR (claimed_at < ?2 - ?5 AND NOT EXISTS (
                        SELECT 1 FROM instances i
                        WHERE i.id = backup_claims.instance_id AND i.last_seen > ?2 - ?5))))
                    OR (outcome = 'failed' AND finished_at < ?2 - ?4))",
            )
            .bind(instance)
            .bind(now)
            .bind(slot)
            .bind(micros(stale_after))
            .bind(micros(down_after))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn finish_backup(&self, slot: i64, instance: &str, done: &BackupDone) -> Result<()> {
        sqlx::query(
            "UPDATE backup_claims SET finished_at = CAST(unixepoch('subsec') * 1000000 AS INTEGER),
                outcome = ?, file = ?, bytes = ?, digest = ?, error = ?
             WHERE slot = ? AND instance_id = ?",
        )
        .bind(if done.ok { "ok" } else { "failed" })
        .bind(&done.file)
        .bind(done.bytes)
        .bind(&done.digest)
        .bind(&done.error)
        .bind(slot)
        .bind(instance)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn backup_claims(&self, limit: i64) -> Result<Vec<BackupClaim>> {
        let rows: Vec<ClaimRecord<Time>> = sqlx::query_as(
            "SELECT slot, instance_id, claimed_at, finished_at, outcome, file, bytes, digest, error
             FROM backup_claims ORDER BY slot DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(BackupClaim::from).collect())
    }

    async fn prune_backup_claims(&self, below: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM backup_claims WHERE slot < ?")
            .bind(below)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected())
    }
}
