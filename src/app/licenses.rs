//! Licenses: applying a signed license file, listing licenses and features,
//! and the integrity check that binds seat rows to the sealed license.

use super::*;

#[derive(Debug, Clone, Serialize)]
pub struct LicenseView {
    pub license_id: String,
    pub serial: i64,
    pub customer: String,
    pub vendor_key_id: String,
    pub applied_at: DateTime<Utc>,
    /// "ok", or why the stored license is refused.
    pub status: String,
    pub features: Vec<license::FeatureDef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FeatureView {
    #[serde(flatten)]
    pub usage: FeatureUsage,
    /// Set when the integrity check refuses this feature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl FeatureView {
    /// The free seats clients are told of: none while the integrity check
    /// refuses the feature (a grant would be refused).
    pub fn free_for_clients(&self) -> i64 {
        if self.refused.is_some() {
            0
        } else {
            self.usage.free
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IntegrityReport {
    pub licenses_checked: usize,
    pub refused: Refusals,
    /// Refused features signed by a vendor key this instance does not trust
    /// (their leases are still renewed here).
    pub untrusted: std::collections::BTreeSet<String>,
}

/// The feature rows with their seat counts, as cached for clients.
type Counted = Arc<Vec<crate::storage::FeatureRow>>;
/// A count of them in flight.
type CountFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Counted, StorageError>> + Send>>;

/// The licenses this instance trusts and serves: the vendor keys, the
/// features the integrity check refuses, and the seat counts clients see.
pub struct Licenses {
    vendor_keys: RwLock<Vec<VendorKey>>,
    refused: RwLock<Refusals>,
    /// Features the integrity check found mismatched since start.
    integrity_mismatches: AtomicU64,
    /// Of those, the features refused only because this instance does not
    /// trust the vendor key that signed them (a vendor key being added during
    /// a rolling change): nothing says their rows are wrong, so their
    /// heartbeats are still answered; only grants wait for the key.
    untrusted: RwLock<std::collections::BTreeSet<String>>,
    /// Seat counts for clients' `info` requests (counting scans every slot).
    usage_cache: crate::cache::Cached<Counted>,
    storage: Arc<dyn Storage>,
    gate: Arc<DbGate>,
    keys: Arc<Keys>,
}

impl Licenses {
    pub(super) fn new(
        storage: Arc<dyn Storage>,
        config: Arc<Config>,
        gate: Arc<DbGate>,
        keys: Arc<Keys>,
    ) -> Licenses {
        Licenses {
            vendor_keys: RwLock::new(config.vendor_keys.clone()),
            refused: RwLock::new(Refusals::new()),
            integrity_mismatches: AtomicU64::new(0),
            untrusted: RwLock::default(),
            usage_cache: crate::cache::Cached::new(USAGE_CACHE),
            storage,
            gate,
            keys,
        }
    }

    /// Trusts one more vendor key (the demo key of `serve --demo`).
    pub fn trust_vendor_key(&self, key: VendorKey) {
        let mut keys = self.vendor_keys.write().expect("lock");
        if !keys.contains(&key) {
            keys.push(key);
        }
    }

    /// Seats changed through this instance: its own clients see the new
    /// counts at once (others' changes show within [`USAGE_CACHE`]).
    pub(super) fn seats_changed(&self) {
        self.usage_cache.clear();
    }

    /// Why the integrity check refuses `feature`, if it does.
    pub(super) fn refusal(&self, feature: &str) -> Option<String> {
        self.refused.read().expect("lock").get(feature).cloned()
    }

    /// The features refused now, and of those the ones refused only for an
    /// untrusted vendor key (whose leases are still renewed).
    pub(super) fn refusals(&self) -> (Refusals, std::collections::BTreeSet<String>) {
        let refused = self.refused.read().expect("lock").clone();
        let untrusted = self.untrusted.read().expect("lock").clone();
        (refused, untrusted)
    }

    /// Verifies, seals and stores a license file; creates or resizes slots.
    pub async fn apply_license(
        &self,
        text: &str,
    ) -> Result<(ApplyOutcome, license::VerifiedLicense), AppError> {
        let keys = self.vendor_keys.read().expect("lock").clone();
        if keys.is_empty() {
            return Err(AppError::License(LicenseError::UnknownKey(
                "(none configured: set vendor_keys to the vendor's .pub file)".into(),
            )));
        }
        let v = license::verify(text, &keys)?;
        let now = self.storage.now().await?;
        if v.def
            .features
            .iter()
            .all(|f| f.expires.is_some_and(|e| e <= now))
        {
            return Err(LicenseError::Expired(v.def.license_id.clone()).into());
        }
        // The same serial stored, but its row does not open or verify: if it
        // is not a different file of that serial, this apply repairs it.
        let repair = match self
            .storage
            .licenses()
            .await?
            .into_iter()
            .find(|l| l.license_id == v.def.license_id)
        {
            Some(st) if st.serial == v.def.serial as i64 => {
                self.open_license(&st.license_id, &st.sealed, &st.digest)
                    .is_err()
                    && self
                        .keys
                        .keyring()
                        .open(SealedColumn::License.at(&st.license_id), &st.sealed)
                        .map_or(true, |text| text.as_slice() == v.raw.as_bytes())
            }
            _ => false,
        };
        if repair {
            tracing::warn!(license = %v.def.license_id, "the stored row of this license was damaged: re-applying repairs it");
        }
        let record = LicenseRecord {
            repair,
            license_id: v.def.license_id.clone(),
            serial: v.def.serial as i64,
            customer: v.def.customer.clone(),
            vendor_key_id: v.vendor_key_id.clone(),
            digest: v.digest.clone(),
            sealed: self.keys.keyring().seal(
                SealedColumn::License.at(&v.def.license_id),
                v.raw.as_bytes(),
            ),
            features: v.def.features.clone(),
        };
        let outcome = self.storage.apply_license(&record).await?;
        tracing::info!(license = %v.def.license_id, serial = v.def.serial, ?outcome, "license applied");
        self.verify_integrity().await?;
        self.usage_cache.clear();
        Ok((outcome, v))
    }

    /// Removes license `license_id`: its features stop granting at once on
    /// every instance (grants read the seats column); leases it granted are
    /// kept like a shrink keeps them (retiring: valid until released or
    /// expired, never revoked, docs/seats.md). Answers how many features it
    /// had and how many of its leases are still live.
    pub async fn remove_license(&self, license_id: &str) -> Result<serde_json::Value, AppError> {
        let Some(features) = self.storage.remove_license(license_id).await? else {
            return Err(AppError::NotFound(format!(
                "no license '{}'",
                license_id.chars().take(64).collect::<String>()
            )));
        };
        let held = self
            .storage
            .feature_rows()
            .await?
            .iter()
            .filter(|r| r.license_id == license_id)
            .map(|r| r.used)
            .sum::<i64>();
        tracing::info!(license = %license_id, features, held, "license removed");
        self.verify_integrity().await?;
        self.usage_cache.clear();
        Ok(serde_json::json!({
            "removed": license_id,
            "features": features,
            "leases_kept": held,
        }))
    }

    /// Whether a stored license opens and would verify but for a vendor key
    /// this instance does not trust.
    pub(super) fn only_vendor_key_untrusted(&self, license_id: &str, sealed: &[u8]) -> bool {
        let Ok(text) = self
            .keys
            .keyring()
            .open(SealedColumn::License.at(license_id), sealed)
        else {
            return false;
        };
        let Ok(text) = std::str::from_utf8(&text) else {
            return false;
        };
        let keys = self.vendor_keys.read().expect("lock").clone();
        matches!(
            license::verify(text, &keys),
            Err(LicenseError::UnknownKey(_))
        )
    }

    /// Opens and re-verifies a stored license.
    pub(super) fn open_license(
        &self,
        license_id: &str,
        sealed: &[u8],
        digest: &str,
    ) -> Result<license::VerifiedLicense, String> {
        let text = self
            .keys
            .keyring()
            .open(SealedColumn::License.at(license_id), sealed)
            .map_err(|e: SealError| format!("stored license {license_id} refused: {e}"))?;
        let text = std::str::from_utf8(&text)
            .map_err(|_| format!("stored license {license_id} is not text"))?;
        let keys = self.vendor_keys.read().expect("lock").clone();
        let v = license::verify(text, &keys)
            .map_err(|e| format!("stored license {license_id} refused: {e}"))?;
        if v.def.license_id != license_id || v.digest != digest {
            return Err(format!(
                "stored license {license_id} refused: its row does not match the sealed file"
            ));
        }
        Ok(v)
    }

    /// Every applied license as stored, with whether its sealed file still
    /// opens and matches its row (for operators).
    pub async fn licenses(&self) -> Result<Vec<LicenseView>, AppError> {
        let rows = self.storage.licenses().await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let opened = self.open_license(&r.license_id, &r.sealed, &r.digest);
                LicenseView {
                    status: opened
                        .as_ref()
                        .map(|_| "ok".to_string())
                        .unwrap_or_else(|e| e.clone()),
                    features: opened.map(|v| v.def.features).unwrap_or_default(),
                    license_id: r.license_id,
                    serial: r.serial,
                    customer: r.customer,
                    vendor_key_id: r.vendor_key_id,
                    applied_at: r.applied_at,
                }
            })
            .collect())
    }

    /// Checks that every feature row and its active slot count match the
    /// sealed, signed license; refuses the features that do not.
    pub async fn verify_integrity(&self) -> Result<IntegrityReport, AppError> {
        let mut report = self.integrity_pass().await?;
        if !report.refused.is_empty() {
            // A license applied between our two reads looks like a mismatch;
            // only what survives a second look is refused.
            report = self.integrity_pass().await?;
        }
        let before = std::mem::replace(
            &mut *self.refused.write().expect("lock"),
            report.refused.clone(),
        );
        *self.untrusted.write().expect("lock") = report.untrusted.clone();
        self.alert_mismatches(&before, &report);
        Ok(report)
    }

    /// Logs every refused feature, and counts those refused anew (or for a
    /// new reason) in `integrity_mismatches` (admin status). A mismatch is
    /// an error under the stable target `floatlm::integrity` with
    /// `event = "integrity_mismatch"`, on every check while it lasts, so a
    /// log alert fires whenever one exists; a feature refused only because
    /// this instance does not trust its vendor key is no mismatch (a key
    /// being added during a rolling change) and is logged as a warning.
    pub(super) fn alert_mismatches(&self, before: &Refusals, report: &IntegrityReport) {
        for (feature, why) in &report.refused {
            if report.untrusted.contains(feature) {
                tracing::warn!(%feature, reason = %why, "feature refused for grants on this instance: its license is signed by a vendor key this instance does not trust");
                continue;
            }
            let new = before.get(feature) != Some(why);
            if new {
                self.integrity_mismatches.fetch_add(1, Ordering::Relaxed);
            }
            tracing::error!(
                target: "floatlm::integrity",
                event = "integrity_mismatch",
                %feature,
                reason = %why,
                new,
                "integrity mismatch: the seat rows or the sealed license of this feature were changed outside floatlm; \
                 it grants nothing and its heartbeats are answered lost until its license file is applied again"
            );
        }
    }

    /// Features the integrity check found mismatched since start (each
    /// counted when first refused, or refused for a new reason).
    pub fn integrity_mismatches(&self) -> u64 {
        self.integrity_mismatches.load(Ordering::Relaxed)
    }

    /// The features refused now, with the reason.
    pub fn refused_features(&self) -> Refusals {
        self.refused.read().expect("lock").clone()
    }

    pub(super) async fn integrity_pass(&self) -> Result<IntegrityReport, AppError> {
        let licenses = self.storage.licenses().await?;
        let rows = self.storage.feature_rows().await?;
        let mut refused = Refusals::new();
        let mut untrusted = std::collections::BTreeSet::new();
        for lic in &licenses {
            let opened = self.open_license(&lic.license_id, &lic.sealed, &lic.digest);
            if opened.is_err() && self.only_vendor_key_untrusted(&lic.license_id, &lic.sealed) {
                for row in rows.iter().filter(|r| r.license_id == lic.license_id) {
                    untrusted.insert(row.name.clone());
                }
            }
            for row in rows.iter().filter(|r| r.license_id == lic.license_id) {
                let problem = match &opened {
                    Err(e) => Some(e.clone()),
                    Ok(v) => {
                        let def = v.def.features.iter().find(|f| f.name == row.name);
                        let seats = def.map(|f| f.seats as i64).unwrap_or(0);
                        let window_ok = def.is_none_or(|f| {
                            f.not_before == row.not_before && f.expires == row.expires_at
                        });
                        if row.seats != seats || row.active_slots != seats || !window_ok {
                            Some(format!(
                                "license {} grants {seats} seats of '{}' but the database holds {} active slots (seats column {}){}; \
                                 the seat rows were edited outside floatlm — re-apply the license file to repair them",
                                lic.license_id,
                                row.name,
                                row.active_slots,
                                row.seats,
                                if window_ok { "" } else { " and a different validity window" }
                            ))
                        } else {
                            None
                        }
                    }
                };
                if let Some(p) = problem {
                    refused.entry(row.name.clone()).or_insert(p);
                }
            }
        }
        for row in &rows {
            if row.seats > 0 && !licenses.iter().any(|l| l.license_id == row.license_id) {
                refused.entry(row.name.clone()).or_insert(format!(
                    "feature row {} names license {}, which is not stored; it was inserted outside floatlm",
                    row.id, row.license_id
                ));
            }
        }
        Ok(IntegrityReport {
            licenses_checked: licenses.len(),
            refused,
            untrusted,
        })
    }

    /// Seat counts for clients, at most [`USAGE_CACHE`] old: one instance
    /// counts once per second however many clients ask, and shows its own
    /// clients' changes at once. When counting is slow (a large slots table
    /// on a busy database), clients get the previous count without waiting
    /// (at most 30 s old) while the next one runs in the background, no
    /// sooner than ten times the last one's duration (crate::cache).
    pub async fn features_cached(&self) -> Result<Arc<Vec<FeatureView>>, AppError> {
        let rows = self.usage_cache.get_refreshing(self.count()).await?;
        Ok(Arc::new(self.views(&rows)))
    }

    /// The seat count behind [`Licenses::features_cached`], as a fetch.
    fn count(&self) -> impl FnOnce() -> CountFuture + Send + 'static {
        let (storage, gate) = (self.storage.clone(), self.gate.clone());
        move || Box::pin(async move { gated(&gate, || storage.feature_rows()).await.map(Arc::new) })
    }

    /// Keeps the clients' seat counts counted, until `stop`, whether or not
    /// a client asks: a fast count once a second, a slow one every 20 s
    /// (crate::cache), so that no client waits for a count that became slow
    /// while nobody asked or that aged past 30 s in a quiet spell (behind
    /// NGINX, an answer slower than its 1 s read timeout takes the instance
    /// out of rotation).
    pub async fn keep_counts_warm(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(USAGE_CACHE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            self.usage_cache.keep_warm(self.count());
        }
    }

    /// Seat counts per feature, fresh from the database (admin views), with
    /// why the integrity check refuses a feature, if it does.
    pub async fn features(&self) -> Result<Vec<FeatureView>, AppError> {
        let rows = gated(&self.gate, || self.storage.feature_rows()).await?;
        Ok(self.views(&rows))
    }

    /// Seat counts per feature name from the rows of every license, with
    /// the integrity check's refusals as they are now.
    fn views(&self, rows: &[crate::storage::FeatureRow]) -> Vec<FeatureView> {
        let refused = self.refused.read().expect("lock");
        usage_by_name(rows)
            .into_iter()
            .map(|usage| FeatureView {
                refused: refused.get(&usage.name).cloned(),
                usage,
            })
            .collect()
    }
}
