//! MySQL identities (with the revision and revocation log) and admin
//! tokens.

use super::*;

#[async_trait]
impl AccessStore for MySqlStorage {
    async fn insert_identity(&self, row: &IdentityRow) -> Result<()> {
        with_retry(|| async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO identities (id, name, sealed, created_at, expires_at, revoked_at) VALUES (?, ?, ?, NOW(6), ?, NULL)",
            )
            .bind(&row.id)
            .bind(&row.name)
            .bind(&row.sealed)
            .bind(row.expires_at.map(naive))
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
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(IdentityRow::from))
    }

    async fn identities(&self) -> Result<Vec<IdentityRow>> {
        let rows: Vec<IdentityRecord<Time>> = sqlx::query_as(
            "SELECT id, name, sealed, created_at, expires_at, revoked_at FROM identities ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(IdentityRow::from).collect())
    }

    async fn revoke_identity(&self, id: &str) -> Result<bool> {
        with_retry(|| async move {
            let mut tx = self.pool.begin().await?;
            let r = sqlx::query(
                "UPDATE identities SET revoked_at = NOW(6) WHERE id = ? AND revoked_at IS NULL",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok::<_, StorageError>(false);
            }
            // The counter row's lock is held to COMMIT: revisions commit in order.
            sqlx::query("UPDATE identity_revision SET revision = revision + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO identity_revocations (revision, identity_id, revoked_at)
                 SELECT r.revision, i.id, i.revoked_at FROM identity_revision r, identities i
                 WHERE r.id = 1 AND i.id = ?",
            )
            .bind(id)
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
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn identity_revocations(&self, after: i64) -> Result<Vec<Revocation>> {
        let rows: Vec<RevocationRecord<Time>> = sqlx::query_as(
            "SELECT revision, identity_id, revoked_at FROM identity_revocations
             WHERE revision > ? ORDER BY revision",
        )
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Revocation::from).collect())
    }

    async fn insert_token(&self, row: &TokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO admin_tokens (id, name, role, token_hash, created_at) VALUES (?, ?, ?, ?, NOW(6))",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(row.role.as_str())
        .bind(&row.token_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert_first_token(&self, row: &TokenRow) -> Result<bool> {
        let mut conn = self.pool.acquire().await?;
        let got: Option<i64> =
            sqlx::query_scalar("SELECT GET_LOCK(CONCAT('floatlm.first-token.', DATABASE()), 30)")
                .fetch_one(&mut *conn)
                .await?;
        if got != Some(1) {
            return Err(StorageError::LockTimeout(
                "timed out waiting for the first-token lock".into(),
            ));
        }
        let res = async {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM admin_tokens")
                .fetch_one(&mut *conn)
                .await?;
            if n > 0 {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO admin_tokens (id, name, role, token_hash, created_at) VALUES (?, ?, ?, ?, NOW(6))",
            )
            .bind(&row.id)
            .bind(&row.name)
            .bind(row.role.as_str())
            .bind(&row.token_hash)
            .execute(&mut *conn)
            .await?;
            Ok::<bool, StorageError>(true)
        }
        .await;
        sqlx::query("SELECT RELEASE_LOCK(CONCAT('floatlm.first-token.', DATABASE()))")
            .execute(&mut *conn)
            .await?;
        res
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        let row: Option<TokenRecord<Time>> = sqlx::query_as(
            "SELECT id, name, role, token_hash, created_at, revoked_at FROM admin_tokens
             WHERE token_hash = ? AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(TokenRecord::into_row).transpose()
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>> {
        let rows: Vec<TokenRecord<Time>> = sqlx::query_as(
            "SELECT id, name, role, token_hash, created_at, revoked_at FROM admin_tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(TokenRecord::into_row).collect()
    }

    async fn revoke_token(&self, id: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE admin_tokens SET revoked_at = NOW(6) WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn assign_features(&self, id: &str, features: &[String]) -> Result<u64> {
        if features.is_empty() {
            return Ok(0);
        }
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT IGNORE INTO identity_features (identity_id, feature, assigned_at) ",
        );
        q.push_values(features, |mut b, f| {
            b.push_bind(id).push_bind(f).push("NOW(6)");
        });
        Ok(q.build().execute(&self.pool).await?.rows_affected())
    }

    async fn unassign_features(&self, id: &str, features: &[String]) -> Result<u64> {
        let mut n = 0;
        for f in features {
            n += sqlx::query("DELETE FROM identity_features WHERE identity_id = ? AND feature = ?")
                .bind(id)
                .bind(f)
                .execute(&self.pool)
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
        .fetch_all(&self.pool)
        .await?)
    }
}
