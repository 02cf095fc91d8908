//! MySQL key material at rest: canaries, ticket keys, and the sealed
//! columns key rotation rewrites.

use super::*;
use crate::crypto::SealedColumn;

#[async_trait]
impl KeyStore for MySqlStorage {
    async fn canaries(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(
            sqlx::query_as("SELECT key_id, sealed FROM keyring_canary ORDER BY key_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    // Instances starting at once through different Galera nodes write the
    // same first canary and ticket key: the loser's certification conflict
    // (1213) is retried like any, and INSERT IGNORE then finds the row.
    async fn insert_canary(&self, key_id: &str, sealed: &[u8]) -> Result<bool> {
        let r = with_retry(|| async {
            sqlx::query("INSERT IGNORE INTO keyring_canary (key_id, sealed) VALUES (?, ?)")
                .bind(key_id)
                .bind(sealed)
                .execute(&self.pool)
                .await
                .map_err(StorageError::from)
        })
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn retain_canary(&self, keep: &str) -> Result<()> {
        with_retry(|| async {
            sqlx::query("DELETE FROM keyring_canary WHERE key_id <> ?")
                .bind(keep)
                .execute(&self.pool)
                .await
                .map_err(StorageError::from)
        })
        .await?;
        Ok(())
    }

    async fn ticket_keys(&self) -> Result<Vec<(i64, Vec<u8>)>> {
        Ok(
            sqlx::query_as("SELECT id, sealed FROM ticket_keys ORDER BY id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn insert_ticket_key(&self, id: i64, sealed: &[u8]) -> Result<bool> {
        let r = with_retry(|| async {
            sqlx::query("INSERT IGNORE INTO ticket_keys (id, sealed) VALUES (?, ?)")
                .bind(id)
                .bind(sealed)
                .execute(&self.pool)
                .await
                .map_err(StorageError::from)
        })
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn purge_ticket_keys(&self, below: i64) -> Result<u64> {
        let r = with_retry(|| async {
            sqlx::query("DELETE FROM ticket_keys WHERE id < ?")
                .bind(below)
                .execute(&self.pool)
                .await
                .map_err(StorageError::from)
        })
        .await?;
        Ok(r.rows_affected())
    }

    async fn sealed_rows(&self) -> Result<Vec<SealedRow>> {
        let mut out = Vec::new();
        let lic: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT license_id, sealed FROM licenses")
            .fetch_all(&self.pool)
            .await?;
        out.extend(lic.into_iter().map(|(row_id, sealed)| SealedRow {
            column: SealedColumn::License,
            row_id,
            sealed,
        }));
        let ids: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT id, sealed FROM identities")
            .fetch_all(&self.pool)
            .await?;
        out.extend(ids.into_iter().map(|(row_id, sealed)| SealedRow {
            column: SealedColumn::Identity,
            row_id,
            sealed,
        }));
        let keys: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT id, sealed FROM ticket_keys")
            .fetch_all(&self.pool)
            .await?;
        out.extend(keys.into_iter().map(|(id, sealed)| SealedRow {
            column: SealedColumn::TicketKey,
            row_id: id.to_string(),
            sealed,
        }));
        Ok(out)
    }

    async fn reseal(
        &self,
        column: SealedColumn,
        row_id: &str,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool> {
        let sql = reseal_sql(column, "SIGNED");
        let r = sqlx::query(&sql)
            .bind(new)
            .bind(row_id)
            .bind(old)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
