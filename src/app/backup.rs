//! Backups as the running instance takes them: on demand (the admin API
//! hands the file to the operator) and on a schedule (one instance of the
//! cluster per interval, claimed in the database, written into its
//! `backup_dir` with retention). The file format is `crate::backup`.

use super::*;
use crate::backup::files;
use crate::storage::backup::{BackupClaim, BackupDone};

/// Claims listed by `admin backup list`.
const LISTED_CLAIMS: i64 = 100;
/// Claims kept in the claim table (older ones are forgotten).
const KEPT_CLAIMS: i64 = 1000;

/// A backup file made on demand.
#[derive(Debug, Clone)]
pub struct CreatedBackup {
    /// The name it is suggested to be saved under.
    pub name: String,
    pub bytes: Vec<u8>,
    pub manifest: crate::backup::Manifest,
}

/// What `admin backup list` shows.
#[derive(Debug, Clone, Serialize)]
pub struct BackupListing {
    /// Seconds between scheduled backups; None: off on this instance.
    pub interval_s: Option<f64>,
    pub keep: usize,
    /// This instance's `backup_dir`.
    pub dir: String,
    /// The cluster's scheduled backups (the claim table), newest first:
    /// which instance took which one, into its own `backup_dir`.
    pub claims: Vec<BackupClaim>,
    /// The backup files in this instance's `backup_dir`, oldest first.
    pub files: Vec<files::BackupFile>,
}

/// How long a claim may run unfinished before another instance takes it
/// over (it is taken over at once when its instance is down), and how long
/// after a failure the backup is tried again.
fn stale_after(interval: Duration) -> Duration {
    interval.clamp(Duration::from_secs(30), Duration::from_secs(600))
}

/// Backups of the cluster's licensing state: on demand and on a schedule.
pub struct Backups {
    storage: Arc<dyn Storage>,
    config: Arc<Config>,
    gate: Arc<DbGate>,
    metrics: Arc<Metrics>,
    clock: Arc<Clock>,
    /// A backup is encrypted with the master keys.
    keys: Arc<Keys>,
}

impl Backups {
    pub(super) fn new(
        storage: Arc<dyn Storage>,
        config: Arc<Config>,
        gate: Arc<DbGate>,
        metrics: Arc<Metrics>,
        clock: Arc<Clock>,
        keys: Arc<Keys>,
    ) -> Backups {
        Backups {
            storage,
            config,
            gate,
            metrics,
            clock,
            keys,
        }
    }

    /// Reads every restorable row in one snapshot and encrypts it into a
    /// backup file (the CPU work off the runtime).
    async fn build_backup(&self) -> Result<crate::backup::Built, AppError> {
        let snap = gated(&self.gate, || self.storage.snapshot()).await?;
        let ring = self.keys.keyring().clone();
        let instance = self.config.instance_id.clone();
        let backend = match self.storage.backend() {
            Backend::Mysql => "mysql",
            Backend::Sqlite => "sqlite",
        };
        let schema = crate::storage::backup::known_schema();
        tokio::task::spawn_blocking(move || {
            crate::backup::build(&snap, &ring, &instance, backend, schema)
        })
        .await
        .map_err(|e| AppError::Internal(format!("building the backup file failed: {e}")))
    }

    /// A backup of the whole cluster's licensing state, now.
    pub async fn create_backup(&self) -> Result<CreatedBackup, AppError> {
        let built = self.build_backup().await;
        crate::backup::backup_finished(
            &self.metrics,
            built.is_ok(),
            self.clock.db_now(),
            built.as_ref().map_or(0, |b| b.bytes.len() as u64),
        );
        let built = built?;
        tracing::info!(digest = %built.manifest.digest, bytes = built.bytes.len(), "backup made on demand");
        Ok(CreatedBackup {
            name: files::file_name(built.manifest.created_at),
            bytes: built.bytes,
            manifest: built.manifest,
        })
    }

    /// The claim table and this instance's backup files.
    pub async fn backup_listing(&self) -> Result<BackupListing, AppError> {
        let claims = self.storage.backup_claims(LISTED_CLAIMS).await?;
        let dir = self.config.backup_dir.clone();
        let listed = dir.clone();
        let files = tokio::task::spawn_blocking(move || files::list(&listed))
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?
            .map_err(|e| AppError::Internal(format!("cannot list {}: {e}", dir.display())))?;
        Ok(BackupListing {
            interval_s: self.config.backup_interval.map(|d| d.as_secs_f64()),
            keep: self.config.backup_keep,
            dir: dir.display().to_string(),
            claims,
            files,
        })
    }

    /// Takes the scheduled backups this instance claims, until `stop`.
    /// Interval slot n covers database times [n × interval, (n+1) × interval);
    /// the first instance to notice that the current slot has no backup
    /// claims it and takes it (so a slot that passed while every instance
    /// was down is made up by the current one as soon as one runs).
    pub async fn backup_schedule(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(interval) = self.config.backup_interval else {
            return;
        };
        let every = (interval / 10).clamp(Duration::from_millis(200), Duration::from_secs(30));
        // After a lost claim, look again this much later (to take over a
        // claim whose instance died).
        let recheck = every.max(Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut done: Option<i64> = None;
        let mut next_try: Option<(i64, std::time::Instant)> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let ms = interval.as_millis().max(1) as i64;
            let slot = self.clock.db_now().timestamp_millis().div_euclid(ms);
            if done == Some(slot)
                || next_try.is_some_and(|(s, at)| s == slot && std::time::Instant::now() < at)
            {
                continue;
            }
            match self.scheduled_backup(slot, interval).await {
                Ok(true) => done = Some(slot),
                Ok(false) => next_try = Some((slot, std::time::Instant::now() + recheck)),
                Err(e) => {
                    tracing::warn!(error = %e, slot, "could not claim the scheduled backup");
                    next_try = Some((slot, std::time::Instant::now() + recheck));
                }
            }
        }
    }

    /// Claims and takes the backup of `slot`; false when another instance
    /// holds the claim.
    async fn scheduled_backup(&self, slot: i64, interval: Duration) -> Result<bool, AppError> {
        let me = self.config.instance_id.clone();
        if !self
            .storage
            .claim_backup(slot, &me, down_after(&self.config), stale_after(interval))
            .await?
        {
            return Ok(false);
        }
        let ms = interval.as_millis().max(1) as i64;
        let starts = DateTime::from_timestamp_millis(slot.saturating_mul(ms)).unwrap_or_default();
        let name = files::file_name(starts);
        let outcome = async {
            let built = self.build_backup().await.map_err(|e| e.to_string())?;
            let (dir, keep) = (self.config.backup_dir.clone(), self.config.backup_keep);
            let path = dir.join(&name);
            let len = built.bytes.len();
            let bytes = built.bytes;
            let pruned = tokio::task::spawn_blocking(move || {
                files::write_atomic(&path, &bytes)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                files::prune(&dir, keep)
                    .map_err(|e| format!("cannot delete old backups in {}: {e}", dir.display()))
            })
            .await
            .map_err(|e| e.to_string())??;
            if !pruned.is_empty() {
                tracing::info!(deleted = ?pruned, "deleted backups beyond backup_keep");
            }
            Ok::<_, String>((len, built.manifest.digest))
        }
        .await;
        let done = match &outcome {
            Ok((len, digest)) => BackupDone {
                ok: true,
                file: Some(name.clone()),
                bytes: Some(*len as i64),
                digest: Some(digest.clone()),
                error: None,
            },
            Err(e) => BackupDone {
                ok: false,
                file: Some(name.clone()),
                bytes: None,
                digest: None,
                error: Some(e.clone()),
            },
        };
        crate::backup::backup_finished(
            &self.metrics,
            done.ok,
            self.clock.db_now(),
            done.bytes.unwrap_or(0) as u64,
        );
        match &outcome {
            Ok(_) => {
                tracing::info!(slot, file = %name, dir = %self.config.backup_dir.display(), "scheduled backup written")
            }
            Err(e) => {
                tracing::error!(slot, error = %e, "scheduled backup failed; another instance retries it later")
            }
        }
        self.storage.finish_backup(slot, &me, &done).await?;
        if let Err(e) = self
            .storage
            .prune_backup_claims(slot.saturating_sub(KEPT_CLAIMS))
            .await
        {
            tracing::warn!(error = %e, "could not forget old backup claims");
        }
        Ok(true)
    }
}
