//! The cluster: this instance's row in the cluster view, drain and removal,
//! the database watch behind the outage gate, and periodic maintenance.

use super::*;

/// Refuses to start (and to migrate) while an instance of 0.1 still serves
/// this database: 0.1 answers heartbeats from memory and shortens the
/// expiry later versions promise from, so the two must not run side by
/// side. docs/operations.md ("Upgrading") says how to move from 0.1.
pub(super) async fn refuse_older_instances(
    storage: &dyn Storage,
    config: &Config,
) -> Result<(), StartError> {
    let within = config.cluster_heartbeat * 3;
    let old: Vec<String> = storage
        .live_versions(within)
        .await?
        .into_iter()
        .filter(|(id, v)| v.starts_with("0.1.") && *id != config.instance_id)
        .map(|(id, v)| format!("{id} ({v})"))
        .collect();
    if old.is_empty() {
        return Ok(());
    }
    Err(StartError::Io(format!(
        "instance(s) {} of floatlm 0.1 still serve this database; 0.1 and {} must not run side by side \
         (0.1 shortens leases that this version has promised): stop every 0.1 instance, then start this one",
        old.join(", "),
        env!("CARGO_PKG_VERSION")
    )))
}

/// One instance in the cluster view.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterMember {
    #[serde(flatten)]
    pub row: crate::storage::InstanceRow,
    /// up, draining or down.
    pub state: &'static str,
}

impl App {
    /// The licensing address this instance records in the cluster view:
    /// `public_address` when it is configured, else the address the
    /// licensing listener is bound to (`listening`).
    pub fn advertised_address(&self, listening: String) -> String {
        if self.config.sources.contains_key("public_address") {
            self.config.public_address.clone()
        } else {
            listening
        }
    }

    /// Keeps this instance's row in the cluster view fresh and honours an
    /// operator's drain request, until `stop`.
    pub async fn cluster_heartbeat(
        self: Arc<Self>,
        licensing: String,
        admin: String,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.config.cluster_heartbeat);
        let mut fresh = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            // First, so a revocation elsewhere reaches this instance within
            // one cluster heartbeat (plus this read).
            if let Err(e) = self.follow_identity_changes().await {
                tracing::warn!(error = %e, "could not catch up with changes to identities");
            }
            let version = env!("CARGO_PKG_VERSION");
            // Not gated: this is the probe that notices the database's return.
            let beat = self
                .storage
                .instance_heartbeat(&InstanceBeat {
                    id: self.instance_id(),
                    address: &licensing,
                    admin_address: &admin,
                    version,
                    key_ids: &self.keyring.fingerprints(),
                    lease_ttl_ms: self.config.lease_ttl.as_millis() as i64,
                    fresh,
                })
                .await;
            self.gate.observe_write(&beat);
            match beat {
                Ok(drain) => {
                    fresh = false;
                    if drain && !self.is_draining() {
                        tracing::warn!(
                            "an operator asked this instance to drain: healthz now answers 503"
                        );
                        self.set_draining();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not refresh this instance in the cluster view")
                }
            }
            if let Err(e) = self.sync_clock().await {
                tracing::warn!(error = %e, "could not read the database clock");
            }
            if let Err(e) = self.refresh_ticket_keys().await {
                tracing::warn!(error = %e, "could not refresh the resumption ticket keys");
            }
        }
    }

    /// Every recorded instance, with its state by the database clock.
    pub async fn cluster(&self) -> Result<Vec<ClusterMember>, AppError> {
        let down_after = self.down_after().as_secs_f64();
        Ok(self
            .storage
            .instances()
            .await?
            .into_iter()
            .map(|row| ClusterMember {
                state: if row.silent_for_s > down_after {
                    "down"
                } else if row.drain_requested {
                    "draining"
                } else {
                    "up"
                },
                row,
            })
            .collect())
    }

    pub(super) fn down_after(&self) -> Duration {
        self.config.cluster_heartbeat * 3
    }

    /// Asks instance `id` to drain (it sees the request on its next cluster
    /// heartbeat); NotFound when it is not in the cluster view.
    pub async fn drain_instance(&self, id: &str) -> Result<(), AppError> {
        if self.storage.request_drain(id).await? {
            tracing::info!(instance = %id, "drain requested");
            Ok(())
        } else {
            Err(AppError::NotFound(format!(
                "instance {id} is not in the cluster view"
            )))
        }
    }

    /// Forgets a dead instance; a live one is refused.
    pub async fn remove_instance(&self, id: &str) -> Result<(), AppError> {
        if self.storage.remove_instance(id, self.down_after()).await? {
            return Ok(());
        }
        match self.storage.instances().await?.into_iter().find(|i| i.id == id) {
            Some(i) => Err(AppError::Conflict(format!(
                "instance {id} was seen {:.1} s ago and counts as alive; stop it first (it is down after {:.0} s of silence)",
                i.silent_for_s,
                self.down_after().as_secs_f64()
            ))),
            None => Err(AppError::NotFound(format!("instance {id} is not in the cluster view"))),
        }
    }

    /// Probes the database twice a second on a connection of its own, so the
    /// gate closes within about half a second of an outage (requests then
    /// fail fast) and opens as soon as the database answers again (healthz
    /// follows), until `stop`.
    ///
    /// The probe writes too (stamps this instance's `last_seen`) on SQLite,
    /// whose writes can fail while reads work (a full disk, a read-only
    /// file), and on MySQL while writes are known to fail: a database that
    /// cannot write closes the gate within about half a second and opens it
    /// once a write commits again. On MySQL the reachability probe alone runs
    /// otherwise, so a healthy cluster pays no write for it.
    pub async fn watch_database(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(crate::dbgate::PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let write = self.backend() == Backend::Sqlite
                || self.gate.fault() == Some(crate::dbgate::Fault::WritesFail);
            // Ok(true): a write committed; Ok(false): the database answered.
            let probe = async {
                self.storage.probe().await?;
                if write {
                    return self.storage.probe_write(self.instance_id()).await;
                }
                Ok(false)
            };
            match tokio::time::timeout(crate::dbgate::PROBE_TIMEOUT, probe).await {
                Ok(Ok(true)) => self.gate.opened(),
                Ok(Ok(false)) => self.gate.answered(),
                Ok(Err(e)) => self.gate.observe_error(&e),
                Err(_) => self.gate.failed(&format!(
                    "the database did not answer a probe within {:?}",
                    crate::dbgate::PROBE_TIMEOUT
                )),
            }
        }
    }

    /// Periodic upkeep: integrity check, request-id purge and usage records
    /// (app/usage.rs), until `stop`.
    pub async fn maintenance(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.integrity_interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            match verify_canary(self.storage.as_ref(), &self.keyring).await {
                Ok(problem) => {
                    if let Some(e) = &problem {
                        tracing::error!(error = %e, "key canary check failed");
                    }
                    *self.key_problem.write().expect("lock") =
                        problem.map(|e| format!("key canary: {e}"));
                }
                // The database is away: that is the gate's to report, and the
                // key is judged again once it answers.
                Err(e) => {
                    tracing::warn!(error = %e, "key canary check could not read the database")
                }
            }
            // Logs (and counts) what it refuses.
            if let Err(e) = self.verify_integrity().await {
                tracing::warn!(error = %e, "integrity check could not run");
            }
            let swept = self.sessions.sweep(self.db_now());
            if swept > 0 {
                tracing::debug!(swept, "forgot idle protocol sessions");
            }
            // Past this, every session of a revoked identity was refused at
            // a request or forgotten as idle.
            self.revoked
                .prune(self.config.session_idle + Duration::from_secs(300));
            if let Err(e) = self.storage.purge_requests(REQUEST_ID_RETENTION).await {
                tracing::warn!(error = %e, "could not purge old request ids");
            }
            self.usage_upkeep().await;
        }
    }
}
