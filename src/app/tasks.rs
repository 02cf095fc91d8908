//! The periodic tasks that drive several services at once, so they are the
//! App's (wiring): the cluster heartbeat and maintenance. A task that needs
//! one service is that service's (`Cluster::watch_database`,
//! `Backups::backup_schedule`).

use super::*;

impl App {
    /// Keeps this instance's row in the cluster view fresh and honours an
    /// operator's drain request, until `stop`; on each beat also catches up
    /// with identity changes, the database clock and the ticket keys.
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
            if let Err(e) = self.access.follow_identity_changes().await {
                tracing::warn!(error = %e, "could not catch up with changes to identities");
            }
            if self.cluster.beat(&licensing, &admin, fresh).await {
                fresh = false;
            }
            if let Err(e) = self.clock.sync_clock().await {
                tracing::warn!(error = %e, "could not read the database clock");
            }
            if let Err(e) = self.tickets.refresh_ticket_keys().await {
                tracing::warn!(error = %e, "could not refresh the resumption ticket keys");
            }
        }
    }

    /// Periodic upkeep: key canary, integrity check, idle sessions, the
    /// revocations remembered, request-id purge and usage records
    /// (app/usage.rs), until `stop`.
    pub async fn maintenance(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.integrity_interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            self.keys.check_canary().await;
            // Logs (and counts) what it refuses.
            if let Err(e) = self.licenses.verify_integrity().await {
                tracing::warn!(error = %e, "integrity check could not run");
            }
            self.admission.sweep_idle();
            // Past this, every session of a revoked identity was refused at
            // a request or forgotten as idle.
            self.access
                .prune_revoked(self.config.session_idle + Duration::from_secs(300));
            if let Err(e) = self.storage.purge_requests(REQUEST_ID_RETENTION).await {
                tracing::warn!(error = %e, "could not purge old request ids");
            }
            self.usage.usage_upkeep().await;
        }
    }
}
