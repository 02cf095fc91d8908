//! SQLite identities (with the revision and revocation log) and admin
//! tokens.

use super::*;

#[async_trait]
impl AccessStore for SqliteStorage {
    async fn insert_identity(&self, row: &IdentityRow) -> Result<()> {
        with_retry(|| async move {
            let mut tx = self.begin().await?;
            sqlx::query(
                "INSERT INTO identities (id, name, sealed, created_at, expires_at, revoked_at)
                 VALUES (?, ?, ?, CAST(unixepoch('subsec') * 1000000 AS INTEGER), ?, NULL)",
            )
            .bind(&row.id)
            .bind(&row.name)
            .bind(&row.sealed)
            .bind(row.expires_at.map(us))
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE identity_revision SET revision = revision + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, StorageError>(())
        })
        .await
    }

    async fn identity(&self, id: &str) -> Result<Option<IdentityRow>> {
        let row: Option<IdentityRecord<Time>> = sqlx::query_as(
            "SELECT id, name, sealed, created_at, expires_at, revoked_at FROM identities WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(IdentityRow::from))
    }

    async fn identities(&self) -> Result<Vec<IdentityRow>> {
        let rows: Vec<IdentityRecord<Time>> = sqlx::query_as(
            "SELECT id, name, sealed, created_at, expires_at, revoked_at FROM identities ORDER BY created_at, id",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(IdentityRow::from).collect())
    }

    async fn revoke_identity(&self, id: &str) -> Result<bool> {
        with_retry(|| async move {
            let mut tx = self.begin().await?;
            let now = db_now(&mut tx).await?;
            let r = sqlx::query(
                "UPDATE identities SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok::<_, StorageError>(false);
            }
            sqlx::query("UPDATE identity_revision SET revision = revision + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO identity_revocations (revision, identity_id, revoked_at)
                 SELECT revision, ?, ? FROM identity_revision WHERE id = 1",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn identity_revision(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT revision FROM identity_revision WHERE id = 1")
                .fetch_one(&self.reader)
                .await?,
        )
    }

    async fn identity_revocations(&self, after: i64) -> Result<Vec<Revocation>> {
        let rows: Vec<RevocationRecord<Time>> = sqlx::query_as(
            "SELECT revision, identity_id, revoked_at FROM identity_revocations
             WHERE revision > ? ORDER BY revision",
        )
        .bind(after)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(Revocation::from).collect())
    }

    async fn insert_token(&self, row: &TokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO admin_tokens (id, name, role, token_hash, created_at)
             VALUES (?, ?, ?, ?, CAST(unixepoch('subsec') * 1000000 AS INTEGER))",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(row.role.as_str())
        .bind(&row.token_hash)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn insert_first_token(&self, row: &TokenRow) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO admin_tokens (id, name, role, token_hash, created_at)
             SELECT ?, ?, ?, ?, CAST(unixepoch('subsec') * 1000000 AS INTEGER)
             WHERE NOT EXISTS (SELECT 1 FROM admin_tokens)",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(row.role.as_str())
        .bind(&row.token_hash)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        let row: Option<TokenRecord<Time>> = sqlx::query_as(
            "SELECT id, name, role, token_hash, created_at, revoked_at FROM admin_tokens
             WHERE token_hash = ? AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.reader)
        .await?;
        row.map(TokenRecord::into_row).transpose()
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>> {
        let rows: Vec<TokenRecord<Time>> = sqlx::query_as(
            "SELECT id, name, role, token_hash, created_at, revoked_at FROM admin_tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter().map(TokenRecord::into_row).collect()
    }

    async fn revoke_token(&self, id: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE admin_tokens SET revoked_at = CAST(unixepoch('subsec') * 1000000 AS INTEGER)
             WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn assign_features(&self, id: &str, features: &[String]) -> Result<u64> {
        if features.is_empty() {
            return Ok(0);
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT OR IGNORE INTO identity_features (identity_id, feature, assigned_at) ",
        );
        q.push_values(features, |mut b, f| {
            b.push_bind(id)
                .push_bind(f)
                .push("CAST(unixepoch('subsec') * 1000000 AS INTEGER)");
        });
        Ok(q.build().execute(&self.writer).await?.rows_affected())
    }

    async fn unassign_features(&self, id: &str, features: &[String]) -> Result<u64> {
        let mut n = 0;
        for f in features {
            n += sqlx::query("DELETE FROM identity_features WHERE identity_id = ? AND feature = ?")
                .bind(id)
                .bind(f)
                .execute(&self.writer)
                .await?
                .rows_affected();
        }
        Ok(n)
    }

    async fn assigned_features(&self, id: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT feature FROM identity_features WHERE identity_id = ? ORDER BY feature",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await?)
    }
}
