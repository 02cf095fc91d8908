//! SQLite licenses: applying a license (its row, its features, their slots
//! resized by `domain::slots::plan_resize`) in one transaction, and reading
//! licenses and feature counts.

use super::*;

impl SqliteStorage {
    /// Moves a feature's slots to `target` active ones as
    /// [`plan_resize`] says, each change conditioned on the slot's state.
    async fn resize(&self, tx: &mut Tx<'_>, feature_id: i64, target: i64, now: i64) -> Result<()> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT slot_no, state, expires_at IS NOT NULL AND expires_at > ?1
             FROM slots WHERE feature_id = ?2 ORDER BY slot_no",
        )
        .bind(now)
        .bind(feature_id)
        .fetch_all(&mut **tx)
        .await?;
        let plan = plan_resize(&slot_views(feature_id, &rows)?, target);
        for (slot_no, from, to) in plan.changes {
            sqlx::query(
                "UPDATE slots SET state = ? WHERE feature_id = ? AND slot_no = ? AND state = ?",
            )
            .bind(to.stored())
            .bind(feature_id)
            .bind(slot_no)
            .bind(from.stored())
            .execute(&mut **tx)
            .await?;
        }
        for chunk in plan.inserts.chunks(400) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO slots (feature_id, slot_no) ");
            qb.push_values(chunk, |mut b, slot_no| {
                b.push_bind(feature_id).push_bind(*slot_no);
            });
            qb.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// One apply transaction: the license row, its feature rows and their
    /// slots; refuses a window change that would cut short given promises.
    async fn apply_once(&self, lic: &LicenseRecord) -> Result<ApplyOutcome> {
        let mut tx = self.begin().await?;
        let now = db_now(&mut tx).await?;
        let existing: Option<(i64, String)> =
            sqlx::query_as("SELECT serial, digest FROM licenses WHERE license_id = ?")
                .bind(&lic.license_id)
                .fetch_optional(&mut *tx)
                .await?;
        let outcome = match existing {
            // Same file: nothing to store, but the slots are reconciled below, which
            // repairs seat rows edited outside floatlm.
            Some((_, digest)) if digest == lic.digest && !lic.repair => ApplyOutcome::Unchanged,
            Some((serial, _)) => {
                // A repair rewrites the row of the same serial (its sealed
                // blob or digest was damaged); anything else must be newer.
                if !lic.repair {
                    check_serial(&lic.license_id, serial, lic.serial)?;
                }
                sqlx::query(
                    "UPDATE licenses SET serial = ?, customer = ?, vendor_key_id = ?, digest = ?, sealed = ?, applied_at = ?
                     WHERE license_id = ?",
                )
                .bind(lic.serial)
                .bind(&lic.customer)
                .bind(&lic.vendor_key_id)
                .bind(&lic.digest)
                .bind(&lic.sealed)
                .bind(now)
                .bind(&lic.license_id)
                .execute(&mut *tx)
                .await?;
                if lic.repair {
                    ApplyOutcome::Repaired
                } else {
                    ApplyOutcome::Replaced {
                        previous_serial: serial,
                    }
                }
            }
            None => {
                sqlx::query(
                    "INSERT INTO licenses (license_id, serial, customer, vendor_key_id, digest, sealed, applied_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&lic.license_id)
                .bind(lic.serial)
                .bind(&lic.customer)
                .bind(&lic.vendor_key_id)
                .bind(&lic.digest)
                .bind(&lic.sealed)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                ApplyOutcome::Created
            }
        };
        let old: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT id, name, (not_before IS NULL OR not_before <= ?1) AND (expires_at IS NULL OR expires_at > ?1)
             FROM features WHERE license_id = ?2 ORDER BY id",
        )
        .bind(now)
        .bind(&lic.license_id)
        .fetch_all(&mut *tx)
        .await?;
        for f in &lic.features {
            let nb = f.not_before.map(us);
            let ex = f.expires.map(us);
            let id = match old.iter().find(|(_, n, _)| *n == f.name) {
                Some((id, _, open)) => {
                    let longest: Option<i64> = sqlx::query_scalar(
                        "SELECT MAX(promise_ms) FROM slots
                         WHERE feature_id = ?1 AND state IN (0, 1) AND expires_at > ?2",
                    )
                    .bind(id)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    check_window_change(
                        &lic.license_id,
                        &f.name,
                        utc(now),
                        *open == 1,
                        (f.not_before, f.expires),
                        longest,
                    )?;
                    sqlx::query("UPDATE features SET seats = ?, version = ?, not_before = ?, expires_at = ? WHERE id = ?")
                        .bind(f.seats as i64)
                        .bind(&f.version)
                        .bind(nb)
                        .bind(ex)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    *id
                }
                None => sqlx::query(
                    "INSERT INTO features (license_id, name, seats, version, not_before, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(&lic.license_id)
                .bind(&f.name)
                .bind(f.seats as i64)
                .bind(&f.version)
                .bind(nb)
                .bind(ex)
                .execute(&mut *tx)
                .await?
                .last_insert_rowid(),
            };
            self.resize(&mut tx, id, f.seats as i64, now).await?;
        }
        for (id, name, _) in &old {
            if !lic.features.iter().any(|f| &f.name == name) {
                sqlx::query("UPDATE features SET seats = 0 WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                self.resize(&mut tx, *id, 0, now).await?;
            }
        }
        tx.commit().await?;
        Ok(outcome)
    }
}

#[async_trait]
impl LicenseStore for SqliteStorage {
    async fn apply_license(&self, lic: &LicenseRecord) -> Result<ApplyOutcome> {
        with_retry(|| self.apply_once(lic)).await
    }

    async fn remove_license(&self, license_id: &str) -> Result<Option<u64>> {
        with_retry(|| async {
            let mut tx = self.begin().await?;
            let found: Option<i64> =
                sqlx::query_scalar("SELECT serial FROM licenses WHERE license_id = ?")
                    .bind(license_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if found.is_none() {
                return Ok(None);
            }
            let now = db_now(&mut tx).await?;
            let ids: Vec<i64> =
                sqlx::query_scalar("SELECT id FROM features WHERE license_id = ? ORDER BY id")
                    .bind(license_id)
                    .fetch_all(&mut *tx)
                    .await?;
            for id in &ids {
                sqlx::query("UPDATE features SET seats = 0 WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                self.resize(&mut tx, *id, 0, now).await?;
            }
            sqlx::query("DELETE FROM licenses WHERE license_id = ?")
                .bind(license_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(ids.len() as u64))
        })
        .await
    }

    async fn licenses(&self) -> Result<Vec<StoredLicense>> {
        let rows: Vec<LicenseRow<Time>> = sqlx::query_as(
            "SELECT license_id, serial, customer, vendor_key_id, digest, sealed, applied_at FROM licenses ORDER BY license_id",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(StoredLicense::from).collect())
    }

    async fn feature_rows(&self) -> Result<Vec<FeatureRow>> {
        let rows: Vec<FeatureRecord<Time>> = sqlx::query_as(
            "WITH clock(now) AS (SELECT CAST(unixepoch('subsec') * 1000000 AS INTEGER))
             SELECT f.id, f.license_id, f.name, f.seats, f.version, f.not_before, f.expires_at,
                (f.not_before IS NULL OR f.not_before <= clock.now) AND (f.expires_at IS NULL OR f.expires_at > clock.now) AS valid,
                COALESCE(SUM(s.state = 0), 0) AS active_slots,
                COALESCE(SUM(s.state = 0 AND (s.expires_at IS NULL OR s.expires_at <= clock.now)), 0) AS active_free,
                COALESCE(SUM(s.state = 1 AND s.expires_at > clock.now), 0) AS retiring_live,
                COALESCE(SUM(s.state IN (0, 1) AND s.expires_at > clock.now), 0) AS used
             FROM features f CROSS JOIN clock LEFT JOIN slots s ON s.feature_id = f.id
             GROUP BY f.id
             ORDER BY f.name, f.id",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(FeatureRow::from).collect())
    }
}
