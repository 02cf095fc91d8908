//! Master keys and what they seal: loading or generating the key, the key
//! canary that proves every instance holds the database's keys, and key
//! rotation. Where each blob is sealed is named by
//! [`SealedColumn`](crate::crypto::SealedColumn).

use super::*;

pub(super) const CANARY_PLAINTEXT: &[u8] = b"floatlm key canary v1";
/// The configured master keys, else DATA_DIR/master.key, generating it on
/// first start (SQLite only; configuration refuses MySQL without a key).
pub(super) fn load_or_generate_key(config: &Config) -> Result<Vec<MasterKey>, StartError> {
    let path = match config.load_master_keys() {
        Ok(keys) => return Ok(keys),
        Err(KeyLoadError::NoFile(path)) => path,
        Err(e @ KeyLoadError::Read { .. }) => return Err(StartError::Io(e.to_string())),
        Err(e) => return Err(StartError::Key(e.to_string())),
    };
    let key = MasterKey::generate("k1").expect("static id is valid");
    write_private_file(&path, &format!("{}\n", key.to_spec().as_str()))
        .map_err(|e| StartError::Io(format!("cannot write {}: {e}", path.display())))?;
    tracing::warn!(
        path = %path.display(),
        "GENERATED A NEW MASTER KEY: every license and identity secret is sealed with it. \
         Back this file up; without it the database cannot be read."
    );
    Ok(vec![key])
}

/// The row id the stand-in secret of unknown identities is sealed under
/// (not an identity id: those are hex).
pub(super) const STAND_IN_IDENTITY: &str = "stand-in";

/// Why the canary of a key this instance holds does not open.
pub(super) enum CanaryFault {
    /// Rows sealed under that key id open with our key: the canary row
    /// itself was damaged.
    Damaged,
    /// Nothing that matters is sealed under that key id (a trial start with
    /// another key of the same id wrote the canary): ours may take its place.
    Unused,
    /// Rows are sealed under that key id and none opens with ours.
    WrongKey { sealed: usize },
}

/// Asks the licenses and identity secrets sealed under `key_id` whether this
/// instance's key of that id is the database's.
pub(super) async fn judge_canary(
    storage: &dyn Storage,
    ring: &Keyring,
    key_id: &str,
) -> Result<CanaryFault, StorageError> {
    let rows = storage.sealed_rows().await?;
    let under: Vec<&crate::storage::SealedRow> = rows
        .iter()
        .filter(|r| r.column != SealedColumn::TicketKey)
        .filter(|r| Keyring::blob_key_id(&r.sealed).ok() == Some(key_id))
        .collect();
    if under.is_empty() {
        return Ok(CanaryFault::Unused);
    }
    let opens = under.iter().any(|r| ring.open(r.at(), &r.sealed).is_ok());
    Ok(if opens {
        CanaryFault::Damaged
    } else {
        CanaryFault::WrongKey {
            sealed: under.len(),
        }
    })
}

/// Whether the canary `blob` of `key_id` (a key this instance holds)
/// opens: None when it does, or when the row itself was damaged and has
/// just been rewritten; otherwise why not (never `Damaged`).
async fn canary_fault(
    storage: &dyn Storage,
    ring: &Keyring,
    key_id: &str,
    blob: &[u8],
) -> Result<Option<CanaryFault>, StorageError> {
    if matches!(ring.open(SealedColumn::Canary.at(key_id), blob), Ok(p) if p.as_slice() == CANARY_PLAINTEXT)
    {
        return Ok(None);
    }
    match judge_canary(storage, ring, key_id).await? {
        CanaryFault::Damaged => {
            tracing::warn!(key = %key_id, "the key canary row was damaged (the key opens the rows sealed under it): writing a fresh one");
            repair_canary(storage, ring, key_id, blob).await?;
            Ok(None)
        }
        fault => Ok(Some(fault)),
    }
}

/// Writes a fresh canary for `key_id` in place of `old`; ticket keys sealed
/// under a key of that id that does not open are replaced too (their
/// tickets could not be opened anyway: clients simply handshake again).
pub(super) async fn repair_canary(
    storage: &dyn Storage,
    ring: &Keyring,
    key_id: &str,
    old: &[u8],
) -> Result<(), StorageError> {
    storage
        .reseal(
            SealedColumn::Canary,
            key_id,
            old,
            &ring.seal(SealedColumn::Canary.at(key_id), CANARY_PLAINTEXT),
        )
        .await?;
    for row in storage.sealed_rows().await? {
        let ctx = row.at();
        if row.column == SealedColumn::TicketKey
            && Keyring::blob_key_id(&row.sealed).ok() == Some(key_id)
            && ring.open(ctx, &row.sealed).is_err()
        {
            let fresh = zeroize::Zeroizing::new(crate::crypto::random_bytes(32));
            storage
                .reseal(
                    row.column,
                    &row.row_id,
                    &row.sealed,
                    &ring.seal(ctx, fresh.as_ref()),
                )
                .await?;
        }
    }
    Ok(())
}

/// Proves the configured keys are the ones this database is sealed with;
/// `self_id` is this instance's id.
pub(super) async fn check_canary(
    storage: &dyn Storage,
    ring: &Keyring,
    self_id: &str,
) -> Result<(), StartError> {
    let canaries = storage.canaries().await?;
    let mut matched = false;
    for (key_id, blob) in &canaries {
        let Some(_) = ring.key(key_id) else { continue };
        match canary_fault(storage, ring, key_id, blob).await? {
            None | Some(CanaryFault::Damaged) => matched = true,
            Some(CanaryFault::Unused) => {
                if let Some((other, silent_s)) = live_instance_with_other_key(storage, ring, key_id, self_id).await? {
                    // A stopped instance looks live for up to 10 s; say
                    // so, or a trial start's key looks mandatory.
                    let wait_s = (LIVE_WITHIN_S - silent_s).ceil().max(1.0);
                    return Err(StartError::Key(format!(
                        "master key '{key_id}' differs from the key '{key_id}' of instance {other}, seen {silent_s:.0} s ago; \
                         every instance needs the same keys (if {other} has stopped, this key is accepted in {wait_s:.0} s)"
                    )));
                }
                tracing::warn!(key = %key_id, "the canary of master key '{key_id}' was written with another key of that id, \
                    and nothing is sealed under it: taking its place");
                repair_canary(storage, ring, key_id, blob).await?;
                matched = true;
            }
            Some(CanaryFault::WrongKey { sealed }) => {
                return Err(StartError::Key(format!(
                    "master key '{key_id}' is not the key this database was sealed with (same id, different bytes: \
                     none of the {sealed} license(s) and identity secret(s) sealed under '{key_id}' opens with it); \
                     start with the database's key"
                )))
            }
        }
    }
    if !canaries.is_empty() && !matched {
        let ids: Vec<&str> = canaries.iter().map(|(k, _)| k.as_str()).collect();
        return Err(StartError::Key(format!(
            "this database is sealed with master key(s) {}, but this instance holds {}; configure the database's key \
             (add a new key after it, then run `floatlm admin rotate-key`, to change keys)",
            ids.join(", "),
            ring.key_ids().join(", ")
        )));
    }
    let sealing = ring.sealing_key().id().to_string();
    if !canaries.iter().any(|(k, _)| *k == sealing) {
        storage
            .insert_canary(
                &sealing,
                &ring.seal(SealedColumn::Canary.at(&sealing), CANARY_PLAINTEXT),
            )
            .await?;
        // Another instance may have raced us with a different key of the same id.
        let again = storage.canaries().await?;
        if let Some((_, blob)) = again.iter().find(|(k, _)| *k == sealing) {
            if ring.open(SealedColumn::Canary.at(&sealing), blob).is_err() {
                return Err(StartError::Key(format!(
                    "another instance registered a different master key '{sealing}' for this database at the same moment"
                )));
            }
        }
    }
    Ok(())
}

/// How recently an instance must have been seen to count as live for the
/// key checks (3 cluster heartbeats' worth).
const LIVE_WITHIN_S: f64 = 10.0;

/// A live instance (seen within [`LIVE_WITHIN_S`]) that holds a key of id
/// `key_id` other than ours, and how long ago it was seen. The row of `self_id` is not
/// another instance: it is this one's previous run (a trial start with
/// another key, say), which has stopped, since this one is starting.
pub(super) async fn live_instance_with_other_key(
    storage: &dyn Storage,
    ring: &Keyring,
    key_id: &str,
    self_id: &str,
) -> Result<Option<(String, f64)>, StorageError> {
    let ours: Vec<String> = ring.fingerprints().split(',').map(str::to_string).collect();
    let prefix = format!("{key_id}:");
    Ok(storage
        .instances()
        .await?
        .into_iter()
        .filter(|i| i.silent_for_s < LIVE_WITHIN_S && i.id != self_id)
        .find(|i| {
            i.key_ids
                .split(',')
                .any(|k| k.starts_with(&prefix) && !ours.iter().any(|o| o == k))
        })
        .map(|i| (i.id, i.silent_for_s)))
}

/// Canary check for a running instance: some canary of a key we hold must
/// open, and none of ours may fail (a damaged canary row is rewritten). `Ok(Some(why))` is a key
/// problem; an error is a database that could not be read (the database
/// gate and healthz say that, not the key check).
pub(super) async fn verify_canary(
    storage: &dyn Storage,
    ring: &Keyring,
) -> Result<Option<String>, StorageError> {
    let canaries = storage.canaries().await?;
    let mut matched = false;
    for (key_id, blob) in &canaries {
        if ring.key(key_id).is_some() {
            if canary_fault(storage, ring, key_id, blob).await?.is_some() {
                return Ok(Some(format!(
                    "the canary of master key '{key_id}' no longer opens with this instance's key '{key_id}'"
                )));
            }
            matched = true;
        }
    }
    Ok((!matched)
        .then(|| "no canary of this instance's master keys is left in the database".into()))
}

#[derive(Debug, Clone, Serialize)]
pub struct RotateReport {
    pub sealing_key: String,
    pub resealed: usize,
    pub already_current: usize,
}

/// The master keys this instance holds, and whether the database's key
/// canary still opens with them.
pub struct Keys {
    keyring: Keyring,
    /// Why the key canary no longer opens, if it stopped (checked periodically).
    problem: RwLock<Option<String>>,
    storage: Arc<dyn Storage>,
    config: Arc<Config>,
}

impl Keys {
    pub(super) fn new(keyring: Keyring, storage: Arc<dyn Storage>, config: Arc<Config>) -> Keys {
        Keys {
            keyring,
            problem: RwLock::new(None),
            storage,
            config,
        }
    }

    /// The keyring that seals and opens every sealed column.
    pub(super) fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The ids of the master keys this instance holds.
    pub fn key_ids(&self) -> Vec<String> {
        self.keyring.key_ids()
    }

    /// Why the key canary no longer opens, if it stopped.
    pub fn problem(&self) -> Option<String> {
        self.problem.read().expect("lock").clone()
    }

    /// Checks the key canary again (periodic maintenance) and keeps what it
    /// found for healthz.
    pub(super) async fn check_canary(&self) {
        match verify_canary(self.storage.as_ref(), &self.keyring).await {
            Ok(problem) => {
                if let Some(e) = &problem {
                    tracing::error!(error = %e, "key canary check failed");
                }
                *self.problem.write().expect("lock") = problem.map(|e| format!("key canary: {e}"));
            }
            // The database is away: that is the gate's to report, and the
            // key is judged again once it answers.
            Err(e) => {
                tracing::warn!(error = %e, "key canary check could not read the database")
            }
        }
    }

    /// Re-seals every blob under the newest key, then keeps only its canary.
    pub async fn rotate_key(&self) -> Result<RotateReport, AppError> {
        let sealing = self.keyring.sealing_key().id().to_string();
        // Every live instance must hold the new key, or it could open
        // nothing once the blobs are re-sealed.
        let ours = self
            .keyring
            .fingerprints()
            .split(',')
            .find(|k| k.starts_with(&format!("{sealing}:")))
            .map(str::to_string)
            .unwrap_or_default();
        let lacking: Vec<String> = members(self.storage.as_ref(), &self.config)
            .await?
            .into_iter()
            .filter(|m| m.state != "down" && !m.row.holds_key(&ours))
            .map(|m| m.row.id)
            .collect();
        if !lacking.is_empty() {
            return Err(AppError::Conflict(format!(
                "instance(s) {} do not hold master key '{sealing}' (or hold another key of that id): \
                 add the key on every instance and restart them, then rotate",
                lacking.join(", ")
            )));
        }
        check_canary(
            self.storage.as_ref(),
            &self.keyring,
            &self.config.instance_id,
        )
        .await
        .map_err(|e| match e {
            StartError::Storage(e) => AppError::from(e),
            other => AppError::Conflict(other.to_string()),
        })?;
        let mut resealed = 0;
        let mut already_current = 0;
        for row in self.storage.sealed_rows().await? {
            if Keyring::blob_key_id(&row.sealed).ok() == Some(sealing.as_str()) {
                already_current += 1;
                continue;
            }
            let ctx = row.at();
            let plain = self.keyring.open(ctx, &row.sealed).map_err(|e| {
                AppError::Conflict(format!(
                    "{} row {} cannot be re-sealed: {e}",
                    row.column.table(),
                    row.row_id
                ))
            })?;
            let new = self.keyring.seal(ctx, &plain);
            if self
                .storage
                .reseal(row.column, &row.row_id, &row.sealed, &new)
                .await?
            {
                resealed += 1;
            }
        }
        // Only drop older canaries once nothing is left under older keys.
        let leftover = self
            .storage
            .sealed_rows()
            .await?
            .iter()
            .filter(|r| Keyring::blob_key_id(&r.sealed).ok() != Some(sealing.as_str()))
            .count();
        if leftover == 0 {
            self.storage.retain_canary(&sealing).await?;
        }
        tracing::info!(%sealing, resealed, "master key rotation finished");
        Ok(RotateReport {
            sealing_key: sealing,
            resealed,
            already_current,
        })
    }
}
