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

/// Every recorded instance, with its state by the database clock (down
/// after three silent cluster heartbeats). A free function because key
/// rotation needs the view too, and the cluster service needs the keys.
pub(super) async fn members(
    storage: &dyn Storage,
    config: &Config,
) -> Result<Vec<ClusterMember>, StorageError> {
    let down_after = down_after(config).as_secs_f64();
    Ok(storage
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

/// How long an instance may be silent before it counts as down.
pub(super) fn down_after(config: &Config) -> Duration {
    config.cluster_heartbeat * 3
}

/// This instance in the cluster: whether it can serve (healthz), whether it
/// drains, its row in the cluster view, and the watch on the database
/// behind the outage gate.
pub struct Cluster {
    draining: AtomicBool,
    started_at: DateTime<Utc>,
    /// The database probe behind healthz, so probes cost no round trip each.
    health_cache: crate::cache::Cached<Result<(), String>>,
    /// Whether the database answers: requests fail fast while it does not.
    gate: Arc<DbGate>,
    storage: Arc<dyn Storage>,
    config: Arc<Config>,
    keys: Arc<Keys>,
}

impl Cluster {
    pub(super) fn new(
        storage: Arc<dyn Storage>,
        config: Arc<Config>,
        gate: Arc<DbGate>,
        keys: Arc<Keys>,
    ) -> Cluster {
        Cluster {
            draining: AtomicBool::new(false),
            started_at: Utc::now(),
            health_cache: crate::cache::Cached::new(HEALTH_CACHE),
            gate,
            storage,
            config,
            keys,
        }
    }

    /// This instance's id (answered in a header and in healthz).
    pub fn instance_id(&self) -> &str {
        &self.config.instance_id
    }

    /// Which database backend this instance runs on.
    pub fn backend(&self) -> Backend {
        self.storage.backend()
    }

    /// When this instance started (its own clock).
    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    /// Starts draining: healthz answers 503 and new sessions are refused.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether this instance is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Ok when this instance can serve; otherwise why not.
    pub async fn health(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining: this instance is shutting down".into());
        }
        if let Some(why) = self.keys.problem() {
            return Err(why);
        }
        // Healthz answers anyone who can reach the licensing port: the
        // database's words stay in the log, under the outage's incident.
        if self.gate.fault() == Some(crate::dbgate::Fault::WritesFail) {
            // Reads still work, so the ping below would say nothing: the
            // gate opens when a write commits (the watch probes with one).
            let id = self
                .gate
                .incident()
                .map(|i| i.id().to_string())
                .unwrap_or_default();
            return Err(format!("database writes fail (incident {id})"));
        }
        let unreachable = |i: Incident| format!("database unreachable (incident {})", i.id());
        if let Err(id) = self.gate.admit_read() {
            return Err(unreachable(Incident::logged(id)));
        }
        let probe = self
            .health_cache
            .get(|| async {
                Ok::<_, std::convert::Infallible>(
                    match tokio::time::timeout(Duration::from_secs(2), self.storage.ping()).await {
                        Ok(r) => {
                            self.gate.observe(&r);
                            r.map_err(|e| {
                                unreachable(self.gate.incident().unwrap_or_else(|| {
                                    Incident::of_storage("the health probe failed", &e)
                                }))
                            })
                        }
                        Err(_) => {
                            self.gate.failed("the database did not answer within 2 s");
                            Err("database did not answer within 2 s".into())
                        }
                    },
                )
            })
            .await;
        match probe {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

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

    /// Refreshes this instance's row in the cluster view and honours an
    /// operator's drain request (one cluster heartbeat's write). `fresh`:
    /// the first beat of this run.
    pub(super) async fn beat(&self, licensing: &str, admin: &str, fresh: bool) -> bool {
        let version = env!("CARGO_PKG_VERSION");
        // Not gated: this is the probe that notices the database's return.
        let beat = self
            .storage
            .instance_heartbeat(&InstanceBeat {
                id: self.instance_id(),
                address: licensing,
                admin_address: admin,
                version,
                key_ids: &self.keys.keyring().fingerprints(),
                lease_ttl_ms: self.config.lease_ttl.as_millis() as i64,
                fresh,
            })
            .await;
        self.gate.observe_write(&beat);
        match beat {
            Ok(drain) => {
                if drain && !self.is_draining() {
                    tracing::warn!(
                        "an operator asked this instance to drain: healthz now answers 503"
                    );
                    self.set_draining();
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not refresh this instance in the cluster view");
                false
            }
        }
    }

    /// Every recorded instance, with its state by the database clock.
    pub async fn members(&self) -> Result<Vec<ClusterMember>, AppError> {
        Ok(members(self.storage.as_ref(), &self.config).await?)
    }

    fn down_after(&self) -> Duration {
        down_after(&self.config)
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
}
