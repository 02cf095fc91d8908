//! Resumption tickets: the cluster-wide ticket keys, issuing a ticket to a
//! confirmed session and checking one presented by a resuming client.

use super::*;

/// Resumption tickets: the cluster-wide keys that seal them, issuing and
/// checking them.
pub struct Tickets {
    /// Cluster-wide keys that seal resumption tickets (from the database).
    ticket_keys: TicketKeys,
    /// Serialises reloads of the ticket keys; holds when the last one ran.
    ticket_reload: tokio::sync::Mutex<Option<std::time::Instant>>,
    storage: Arc<dyn Storage>,
    config: Arc<Config>,
    gate: Arc<DbGate>,
    clock: Arc<Clock>,
    keys: Arc<Keys>,
    /// A ticket of an identity this instance saw revoked is refused.
    access: Arc<Access>,
}

impl Tickets {
    pub(super) fn new(
        storage: Arc<dyn Storage>,
        config: Arc<Config>,
        gate: Arc<DbGate>,
        clock: Arc<Clock>,
        keys: Arc<Keys>,
        access: Arc<Access>,
    ) -> Tickets {
        Tickets {
            ticket_keys: TicketKeys::default(),
            ticket_reload: tokio::sync::Mutex::new(None),
            storage,
            config,
            gate,
            clock,
            keys,
            access,
        }
    }

    /// The ticket keys this instance holds (ids: Unix second each period starts).
    pub fn ticket_key_ids(&self) -> Vec<i64> {
        self.ticket_keys.ids()
    }

    pub(super) fn ticket_rotation_s(&self) -> i64 {
        self.config.ticket_rotation.as_secs().max(1) as i64
    }

    /// Makes sure the current period's ticket key exists (the first instance
    /// to need it creates it) and that this instance knows it.
    pub async fn refresh_ticket_keys(&self) -> Result<(), AppError> {
        let current =
            crate::crypto::tickets::period_start(self.clock.db_now(), self.ticket_rotation_s());
        if self.ticket_keys.contains(current) {
            return Ok(());
        }
        let key = zeroize::Zeroizing::new(crate::crypto::random_bytes(32));
        let sealed = self.keys.keyring().seal(
            SealedColumn::TicketKey.at(&current.to_string()),
            key.as_ref(),
        );
        if self.storage.insert_ticket_key(current, &sealed).await? {
            tracing::info!(
                key = current,
                "created the resumption ticket key of this period"
            );
        }
        let _guard = self.ticket_reload.lock().await;
        self.reload_ticket_keys().await
    }

    /// Loads every ticket key that can still open a live ticket and deletes
    /// older ones: a key seals during its period, and its tickets live at
    /// most `ticket_lifetime` after that.
    pub(super) async fn reload_ticket_keys(&self) -> Result<(), AppError> {
        let oldest_useful = self.clock.db_now().timestamp()
            - self.ticket_rotation_s()
            - self.config.ticket_lifetime.as_secs() as i64;
        let mut keys = BTreeMap::new();
        for (id, sealed) in self.storage.ticket_keys().await? {
            if id < oldest_useful {
                continue;
            }
            let opened = self
                .keys
                .keyring()
                .open(SealedColumn::TicketKey.at(&id.to_string()), &sealed);
            match opened.map(|k| <[u8; 32]>::try_from(k.as_slice())) {
                Ok(Ok(k)) => {
                    keys.insert(id, zeroize::Zeroizing::new(k));
                }
                Ok(Err(_)) => tracing::error!(key = id, "ticket key has the wrong length; ignored"),
                Err(e) => {
                    tracing::error!(key = id, error = %e, "ticket key does not open; ignored")
                }
            }
        }
        self.ticket_keys.replace(keys);
        match self.storage.purge_ticket_keys(oldest_useful).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "deleted expired resumption ticket keys"),
            Err(e) => tracing::warn!(error = %e, "could not delete old ticket keys"),
        }
        Ok(())
    }

    /// A resumption ticket for a session just confirmed by its first
    /// request; None when no ticket key is loaded (the client then simply
    /// handshakes again).
    pub fn issue_ticket(
        &self,
        identity_id: &str,
        identity_expires: Option<DateTime<Utc>>,
    ) -> Option<ResumeGrant> {
        let now = self.clock.db_now();
        let lifetime = chrono::Duration::from_std(self.config.ticket_lifetime).ok()?;
        let expires = identity_expires.map_or(now + lifetime, |e| e.min(now + lifetime));
        let (ticket, secret) = self.ticket_keys.issue(now, expires, identity_id)?;
        Some(ResumeGrant {
            ticket: hex::encode(ticket),
            secret: hex::encode(secret.as_ref()),
            valid_for_s: (expires - now).num_seconds().max(0) as u64,
        })
    }

    /// Opens a ticket; a key newer than any this instance knows (another
    /// instance started a new period) is looked up once, at most every 250 ms.
    /// `Err(Err(_))`: the key could not be looked up (the database did not
    /// answer), so nothing is known about the ticket.
    pub(super) async fn open_ticket(
        &self,
        ticket: &[u8],
    ) -> Result<OpenedTicket, Result<TicketError, AppError>> {
        let mut lookup_failed = None;
        let opened = match self.ticket_keys.open(ticket) {
            Err(TicketError::UnknownKey(id))
                if self.ticket_keys.newest().is_none_or(|n| id > n)
                    && id <= self.clock.db_now().timestamp() + 60 =>
            {
                let mut last = self.ticket_reload.lock().await;
                if !self.ticket_keys.contains(id)
                    && last.is_none_or(|t| t.elapsed() >= Duration::from_millis(250))
                {
                    *last = Some(std::time::Instant::now());
                    if let Err(e) = self.reload_ticket_keys().await {
                        tracing::warn!(error = %e, "could not reload ticket keys");
                        lookup_failed = Some(e);
                    }
                }
                self.ticket_keys.open(ticket)
            }
            other => other,
        };
        match (opened, lookup_failed) {
            (Err(TicketError::UnknownKey(_)), Some(e)) => Err(Err(e)),
            (opened, _) => opened.map_err(Ok),
        }
    }

    /// Opens a resumption ticket and checks it may still be used: not
    /// expired, and its identity neither revoked nor expired (database
    /// clock). The error is for the log; the client only learns "refused".
    /// The error is `Unauthorized` (for the log; the client only learns
    /// "refused") or an `Incident` when the database could not be asked.
    pub async fn check_ticket(
        &self,
        ticket: &[u8],
    ) -> Result<(IdentityInfo, OpenedTicket), AppError> {
        let refused = AppError::Unauthorized;
        let t = match self.open_ticket(ticket).await {
            Ok(t) => t,
            Err(Ok(e)) => return Err(refused(e.to_string())),
            // Its key could not be looked up: the ticket may be good.
            Err(Err(e)) => return Err(e),
        };
        let now = self.clock.db_now();
        if t.expires_at <= now {
            return Err(refused(format!(
                "ticket of identity {} expired at {}",
                t.identity_id, t.expires_at
            )));
        }
        // The row itself, not the identity cache: a resumption is rare (a
        // failover, a forgotten session), and so a revocation anywhere is
        // refused here at once.
        let row = gated(&self.gate, || self.storage.identity(&t.identity_id))
            .await?
            .ok_or_else(|| refused(format!("identity {} no longer exists", t.identity_id)))?;
        let identity = IdentityInfo {
            id: row.id,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
        };
        if let Some(why) = self
            .access
            .revoked(&identity.id)
            .or_else(|| identity.refusal(now))
        {
            return Err(refused(why.message));
        }
        Ok((identity, t))
    }
}
