//! Access: client identities (create, import, revoke, the identity cache
//! behind handshakes) and admin API tokens.

use super::*;

/// An admin token as handed out once: `flt_<id>_<secret>`.
pub(super) fn new_token() -> (String, Secret) {
    use base64::Engine;
    let id = random_hex(8);
    let secret =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::crypto::random_bytes(32));
    let token = Secret::new(format!("flt_{id}_{secret}"));
    (id, token)
}

#[derive(Debug, Clone, Serialize)]
pub struct IdentityView {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// "ok", or why the identity cannot log in (its sealed secret is damaged).
    pub status: String,
}

impl From<&IdentityRow> for IdentityView {
    fn from(r: &IdentityRow) -> Self {
        IdentityView {
            id: r.id.clone(),
            name: r.name.clone(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            status: "ok".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What revoking an identity did on the instance that revoked it.
#[derive(Debug, Clone, Serialize)]
pub struct RevokeReport {
    pub revoked: String,
    /// Its sessions on this instance (others end theirs within one cluster
    /// heartbeat).
    pub sessions_ended: usize,
    /// Its leases, ended like an operator's force release.
    pub leases_ended: usize,
    /// When the last of those seats is free again (database clock).
    pub seats_free_at: Option<DateTime<Utc>>,
}

pub(super) struct LeasesEnded {
    leases: usize,
    free_at: Option<DateTime<Utc>>,
}

/// Who may use this instance: client identities (with the cache behind
/// handshakes and the revocations this instance knows), admin tokens, and
/// the operator's auth script.
pub struct Access {
    /// Identities as handshakes and resumptions need them (secrets opened),
    /// known and unknown ids alike; cleared when identities change.
    identity_cache: IdentityCache,
    /// Identities this instance has seen revoked: their sessions stop.
    revoked: RevokedIdentities,
    /// The cluster-wide identity revision this instance has caught up with.
    identity_revision: AtomicI64,
    /// Derives stand-in secrets for unknown identity ids, so they fail the
    /// handshake exactly like a wrong secret.
    dummy_key: zeroize::Zeroizing<[u8; 32]>,
    /// A stand-in secret sealed at start, opened for an identity id the
    /// database does not hold, so that it costs the unsealing a known id's
    /// secret costs.
    stand_in_sealed: Vec<u8>,
    /// The operator's auth script, if configured.
    auth_hook: Option<crate::auth_hook::AuthHook>,
    storage: Arc<dyn Storage>,
    config: Arc<Config>,
    gate: Arc<DbGate>,
    /// The session table (admission's): a revoked identity's sessions end
    /// here at once.
    sessions: Arc<Sessions>,
    clock: Arc<Clock>,
    keys: Arc<Keys>,
    /// Ending a revoked identity's leases changes the seat counts.
    licenses: Arc<Licenses>,
}

impl Access {
    pub(super) async fn new(
        storage: Arc<dyn Storage>,
        config: Arc<Config>,
        gate: Arc<DbGate>,
        sessions: Arc<Sessions>,
        clock: Arc<Clock>,
        keys: Arc<Keys>,
        licenses: Arc<Licenses>,
    ) -> Result<Access, StartError> {
        let stand_in_sealed = keys.keyring().seal(
            SealedColumn::Identity.at(STAND_IN_IDENTITY),
            new_identity_secret().expose().as_bytes(),
        );
        Ok(Access {
            identity_cache: IdentityCache::new(
                crate::identities::CACHE_CAPACITY,
                crate::identities::CACHE_TTL,
            ),
            revoked: RevokedIdentities::default(),
            identity_revision: AtomicI64::new(storage.identity_revision().await?),
            dummy_key: zeroize::Zeroizing::new(
                crate::crypto::random_bytes(32)
                    .try_into()
                    .expect("32 bytes"),
            ),
            stand_in_sealed,
            auth_hook: config.auth_script.clone().map(|p| {
                crate::auth_hook::AuthHook::new(p, config.auth_timeout, config.auth_max_concurrent)
            }),
            storage,
            config,
            gate,
            sessions,
            clock,
            keys,
            licenses,
        })
    }

    /// Writes the first admin token to DATA_DIR/admin.token when the
    /// database holds none and none is configured.
    pub(super) async fn bootstrap_token(&self) -> Result<(), StartError> {
        if self.config.admin_token.is_some() {
            return Ok(());
        }
        let (id, token) = new_token();
        let row = TokenRow {
            id,
            name: "bootstrap".into(),
            role: Role::Admin,
            token_hash: sha256_hex(token.expose().as_bytes()),
            created_at: Utc::now(),
            revoked_at: None,
        };
        if self.storage.insert_first_token(&row).await? {
            let path = self.config.data_dir.join("admin.token");
            let _ = std::fs::remove_file(&path);
            write_private_file(&path, &format!("{}\n", token.expose()))
                .map_err(|e| StartError::Io(format!("cannot write {}: {e}", path.display())))?;
            tracing::warn!(path = %path.display(), "generated the first admin token (role admin); `floatlm admin` reads it from there");
        }
        Ok(())
    }

    /// Runs the operator's auth script on a login, if one is configured
    /// (`input` is only built then); the error is the script's refusal.
    pub(super) async fn check_auth(
        &self,
        input: impl FnOnce() -> crate::auth_hook::AuthInput,
    ) -> Result<(), String> {
        match &self.auth_hook {
            Some(hook) => hook.check(&input()).await.map_err(|why| why.to_string()),
            None => Ok(()),
        }
    }

    /// Why identity `id` is refused because this instance saw it revoked.
    pub(super) fn revoked(&self, id: &str) -> Option<IdentityRefusal> {
        self.revoked.get(id)
    }

    /// Forgets revocations older than `age` (their sessions are all gone).
    pub(super) fn prune_revoked(&self, age: Duration) {
        self.revoked.prune(age);
    }

    /// Creates an identity; the returned string is the only copy of the secret
    /// outside the sealed row.
    pub async fn create_identity(
        &self,
        name: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(IdentityView, IdentityString), AppError> {
        if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
            return Err(AppError::BadRequest(
                "identity name must be 1-128 printable characters".into(),
            ));
        }
        let id = new_identity_id();
        let secret = new_identity_secret();
        let row = IdentityRow {
            sealed: self
                .keys
                .keyring()
                .seal(SealedColumn::Identity.at(&id), secret.expose().as_bytes()),
            id: id.clone(),
            name: name.to_string(),
            created_at: Utc::now(),
            expires_at,
            revoked_at: None,
        };
        self.storage.insert_identity(&row).await?;
        // An unknown id is cached too; other instances clear theirs when
        // their cluster heartbeat sees the identity revision move.
        self.identity_cache.clear();
        let stored = self
            .storage
            .identity(&id)
            .await?
            .ok_or_else(|| AppError::Internal("identity vanished after insert".into()))?;
        tracing::info!(identity = %id, %name, "identity created");
        Ok((
            IdentityView::from(&stored),
            IdentityString {
                id,
                secret,
                address: self.config.public_address.clone(),
            },
        ))
    }

    /// Stores an identity with a given id and secret (migrating identities
    /// from another system; the protocol test vectors).
    pub async fn import_identity(
        &self,
        id: &str,
        name: &str,
        secret: &Secret,
    ) -> Result<IdentityView, AppError> {
        if !valid_identity_id(id) {
            return Err(AppError::BadRequest(
                "identity id must be 16 lower-case hex characters".into(),
            ));
        }
        if secret.expose().len() < 16 || secret.expose().len() > 128 {
            return Err(AppError::BadRequest(
                "identity secret must be 16-128 characters".into(),
            ));
        }
        let row = IdentityRow {
            sealed: self
                .keys
                .keyring()
                .seal(SealedColumn::Identity.at(id), secret.expose().as_bytes()),
            id: id.to_string(),
            name: name.to_string(),
            created_at: Utc::now(),
            expires_at: None,
            revoked_at: None,
        };
        self.storage.insert_identity(&row).await?;
        self.identity_cache.clear();
        Ok(IdentityView::from(&row))
    }

    /// Every identity, revoked ones too, without secrets; one whose sealed
    /// secret does not open says so in its status.
    pub async fn identities(&self) -> Result<Vec<IdentityView>, AppError> {
        Ok(self
            .storage
            .identities()
            .await?
            .iter()
            .map(|row| {
                let mut v = IdentityView::from(row);
                if let Err(why) = self.open_identity_secret(row) {
                    v.status = why;
                }
                v
            })
            .collect())
    }

    /// Opens an identity row's sealed secret; the error says what to do.
    pub(super) fn open_identity_secret(&self, row: &IdentityRow) -> Result<Secret, String> {
        self.open_sealed_secret(&row.id, &row.sealed)
    }

    pub(super) fn open_sealed_secret(&self, id: &str, sealed: &[u8]) -> Result<Secret, String> {
        let damaged = |what: &str| {
            format!(
                "damaged: its sealed secret {what} (the row was edited, or copied from another row); \
                 revoke it and create a new identity"
            )
        };
        let secret = self
            .keys
            .keyring()
            .open(SealedColumn::Identity.at(id), sealed)
            .map_err(|e| damaged(&format!("does not open ({e})")))?;
        String::from_utf8(secret.to_vec())
            .map(Secret::new)
            .map_err(|_| damaged("is not text"))
    }

    /// An identity's row and its secret, opened, straight from the database
    /// (no cache); None when it does not exist or its secret is damaged.
    pub async fn identity_secret(
        &self,
        id: &str,
    ) -> Result<Option<(IdentityRow, Secret)>, AppError> {
        if !valid_identity_id(id) {
            return Ok(None);
        }
        let Some(row) = gated(&self.gate, || self.storage.identity(id)).await? else {
            return Ok(None);
        };
        Ok(self.open_identity_secret(&row).ok().map(|s| (row, s)))
    }

    /// What a handshake or a resumption needs of identity `id`: its secret
    /// opened, its expiry and revocation; for an id that does not exist (or
    /// whose sealed secret is damaged) a stand-in secret and no identity.
    /// Served from the identity cache, filled from the database on a miss:
    /// known and unknown ids alike, so they cost the same.
    pub async fn identity_lookup(&self, id: &str) -> Result<Arc<Lookup>, AppError> {
        if !valid_identity_id(id) {
            // Cannot exist, and says so in its shape alone: nothing to look up.
            return Ok(Arc::new(Lookup {
                secret: self.dummy_secret(id),
                identity: None,
            }));
        }
        if let Some(hit) = self.identity_cache.get(id) {
            return Ok(hit);
        }
        let generation = self.identity_cache.generation();
        // The same work whether the row exists or not, so that a handshake
        // that fails tells nothing by its time either: one database read,
        // one unsealing (the row's secret, or the stand-in sealed at start)
        // and one stand-in derivation. tests/handshake_work.rs compares the
        // database statements of both.
        let row = gated(&self.gate, || self.storage.identity(id)).await?;
        let stand_in = self.dummy_secret(id);
        let opened = match &row {
            Some(row) => self.open_identity_secret(row),
            None => self.open_sealed_secret(STAND_IN_IDENTITY, &self.stand_in_sealed),
        };
        let lookup = Arc::new(match (row, opened) {
            (Some(row), Ok(secret)) => Lookup {
                secret,
                identity: Some(IdentityInfo {
                    id: row.id,
                    expires_at: row.expires_at,
                    revoked_at: row.revoked_at,
                }),
            },
            (Some(_), Err(why)) => {
                // The client learns only "authentication failed", as for an
                // unknown identity; the operator reads why here and in
                // `identity list`.
                tracing::error!(identity = %id, problem = %why, "an identity cannot log in");
                Lookup {
                    secret: stand_in,
                    identity: None,
                }
            }
            (None, _) => Lookup {
                secret: stand_in,
                identity: None,
            },
        });
        self.identity_cache.insert(id, lookup.clone(), generation);
        Ok(lookup)
    }

    /// A stand-in secret for an identity id that does not exist: same shape
    /// as a real one, stable per id within this process.
    pub fn dummy_secret(&self, id: &str) -> Secret {
        use base64::Engine;
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.dummy_key.as_ref())
            .expect("any key length");
        mac.update(id.as_bytes());
        Secret::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()),
        )
    }

    /// Revokes an identity: from now on it gets no session on any instance,
    /// its open sessions on this instance end at once (each answers its
    /// next request `identity_revoked`, sealed) and on every other instance
    /// within one cluster heartbeat, and its leases end like an operator's
    /// force release ([`Seats::force_release`]).
    pub async fn revoke_identity(&self, id: &str) -> Result<RevokeReport, AppError> {
        if !self.storage.revoke_identity(id).await? {
            return Err(AppError::NotFound(format!(
                "identity {id} does not exist or is already revoked"
            )));
        }
        tracing::info!(identity = %id, "identity revoked");
        let at = self
            .storage
            .identity(id)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.revoked_at)
            .unwrap_or_else(|| self.clock.db_now());
        // Memory first, then the leases: a login on this instance that
        // commits after the sweep read the slots sees the refusal (and ends
        // its own lease); one that committed before is in the sweep.
        let sessions_ended = self.note_revoked(id, at);
        let ended = self.end_leases_of(id).await?;
        Ok(RevokeReport {
            revoked: id.to_string(),
            sessions_ended,
            leases_ended: ended.leases,
            seats_free_at: ended.free_at,
        })
    }

    /// This instance stops serving a revoked identity: refused from now on,
    /// its sessions ended, the identity cache cleared. Returns the sessions
    /// ended.
    pub(super) fn note_revoked(&self, id: &str, at: DateTime<Utc>) -> usize {
        let why = IdentityRefusal::revoked(id, at);
        self.revoked.insert(id, why.clone());
        self.identity_cache.clear();
        let n = self.sessions.end_identity(id, &why);
        if n > 0 {
            tracing::info!(identity = %id, sessions = n, "ended the sessions of a revoked identity");
        }
        n
    }

    /// Ends every live lease of `holder` as an operator's force release
    /// does: the holder hears it lost them on its next heartbeat; each seat
    /// is free again once the promises already given for it have run out.
    pub(super) async fn end_leases_of(&self, holder: &str) -> Result<LeasesEnded, AppError> {
        let mut ended = LeasesEnded {
            leases: 0,
            free_at: None,
        };
        let leases = self.storage.leases_of(holder).await?;
        for lease in leases {
            if let Some(at) = self.storage.force_release(lease).await? {
                tracing::info!(%lease, identity = %holder, free_at = %at, "lease of a revoked identity ended");
                ended.leases += 1;
                ended.free_at = ended.free_at.max(Some(at));
            }
        }
        if ended.leases > 0 {
            self.licenses.seats_changed();
        }
        Ok(ended)
    }

    /// Catches up with changes to identities made on any instance: reads
    /// the identity revision (one primary-key read) and, when it moved,
    /// clears the identity cache, stops serving the identities revoked since
    /// and ends their leases (leases granted by this instance in the moments
    /// before it knew are among them). Runs on every cluster heartbeat.
    pub async fn follow_identity_changes(&self) -> Result<(), AppError> {
        let seen = self.identity_revision.load(Ordering::Acquire);
        let now = self.storage.identity_revision().await?;
        if now == seen {
            return Ok(());
        }
        // Cleared before anything is read again, so no read older than the
        // revision just seen is cached afterwards.
        self.identity_cache.clear();
        let revoked = self.storage.identity_revocations(seen).await?;
        for r in &revoked {
            if self.revoked.get(&r.identity_id).is_none() {
                tracing::info!(identity = %r.identity_id, "identity revoked on another instance");
            }
            self.note_revoked(&r.identity_id, r.revoked_at);
        }
        for r in &revoked {
            self.end_leases_of(&r.identity_id).await?;
        }
        // Only now: if ending leases failed, the next heartbeat tries again.
        let caught_up = revoked.iter().map(|r| r.revision).fold(now, i64::max);
        self.identity_revision.store(caught_up, Ordering::Release);
        Ok(())
    }

    /// Why the identity of `session` may not be served now, if it may not:
    /// revoked (as this instance knows) or past its expiry (database clock,
    /// estimated without a round trip).
    pub fn identity_refusal(&self, session: &crate::sessions::Session) -> Option<IdentityRefusal> {
        if let Some(why) = self.revoked.get(&session.identity_id) {
            return Some(why);
        }
        session
            .identity_expires
            .filter(|e| *e <= self.clock.db_now())
            .map(|e| IdentityRefusal::expired(&session.identity_id, e))
    }

    /// How long `session`'s identity may still be served (until its
    /// expiry, database clock); None when it does not expire. Promises are
    /// capped by it: an identity holds no seat past its expiry.
    pub fn identity_time_left(&self, session: &crate::sessions::Session) -> Option<Duration> {
        session
            .identity_expires
            .map(|e| (e - self.clock.db_now()).to_std().unwrap_or(Duration::ZERO))
    }

    /// Which role a bearer token carries, if any.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Role>, AppError> {
        if let Some(cfg) = &self.config.admin_token {
            if bool::from(cfg.expose().as_bytes().ct_eq(token.as_bytes())) {
                return Ok(Some(Role::Admin));
            }
        }
        if !token.starts_with("flt_") || token.len() > 200 {
            return Ok(None);
        }
        Ok(self
            .storage
            .token_by_hash(&sha256_hex(token.as_bytes()))
            .await?
            .map(|t| t.role))
    }

    /// Creates an admin API token with `role`; the returned secret is its
    /// only copy (the database keeps a hash).
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
    ) -> Result<(TokenView, Secret), AppError> {
        if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
            return Err(AppError::BadRequest(
                "token name must be 1-128 printable characters".into(),
            ));
        }
        let (id, token) = new_token();
        let row = TokenRow {
            id: id.clone(),
            name: name.to_string(),
            role,
            token_hash: sha256_hex(token.expose().as_bytes()),
            created_at: Utc::now(),
            revoked_at: None,
        };
        self.storage.insert_token(&row).await?;
        tracing::info!(token = %id, role = role.as_str(), "admin token created");
        Ok((
            TokenView {
                id,
                name: row.name,
                role,
                created_at: row.created_at,
                revoked_at: None,
            },
            token,
        ))
    }

    /// Every admin token, revoked ones too, without secrets.
    pub async fn tokens(&self) -> Result<Vec<TokenView>, AppError> {
        Ok(self
            .storage
            .tokens()
            .await?
            .into_iter()
            .map(|t| TokenView {
                id: t.id,
                name: t.name,
                role: t.role,
                created_at: t.created_at,
                revoked_at: t.revoked_at,
            })
            .collect())
    }

    /// Revokes admin token `id`; NotFound when it does not exist or is
    /// already revoked.
    pub async fn revoke_token(&self, id: &str) -> Result<(), AppError> {
        if self.storage.revoke_token(id).await? {
            Ok(())
        } else {
            Err(AppError::NotFound(format!(
                "token {id} does not exist or is already revoked"
            )))
        }
    }
}
