//! The running instance: storage, keyring and rules wired together.
//!
//! HTTP handlers and the CLI call into [`App`]; it owns start-up checks (key
//! canary, migrations, first admin token), the integrity check that binds
//! seat rows to sealed licenses, and the draining flag.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::config::{Config, DatabaseConfig};
use crate::crypto::keyring::{parse_key_list, Keyring, MasterKey, SealContext, SealError};
use crate::crypto::tickets::{self, OpenedTicket, TicketError, TicketKeys};
use crate::crypto::{random_hex, sha256_hex, Secret};
use crate::domain::identity::{
    new_identity_id, new_identity_secret, valid_identity_id, IdentityString,
};
use crate::domain::license::{self, LicenseError, VendorKey};
use crate::domain::seats::{
    Check, FeatureUsage, Grant, GrantRequest, LeaseRef, LiveLease, Renewal, Role, SeatError,
    CLOCK_MARGIN,
};
use crate::identities::{
    IdentityCache, IdentityInfo, IdentityRefusal, Lookup, Refusals as RevokedIdentities,
};
use crate::incident::Incident;
use crate::sessions::{Found, Promotion};
use floatlm_protocol::handshake::ResumeGrant;

use crate::storage::{
    mysql::MySqlStorage, sqlite::SqliteStorage, usage_by_name, ApplyOutcome, Backend, Extension,
    IdentityRow, InstanceBeat, LicenseRecord, SealedKind, Storage, StorageError, TokenRow,
};

const CANARY_PLAINTEXT: &[u8] = b"floatlm key canary v1";
/// Clients' seat counts may be this old (admin views are always fresh).
const USAGE_CACHE: Duration = Duration::from_secs(1);
/// A healthz answer may rest on a database probe this old.
const HEALTH_CACHE: Duration = Duration::from_millis(500);
/// Request ids are kept this long for idempotent retries.
const REQUEST_ID_RETENTION: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    License(#[from] LicenseError),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Seat(#[from] SeatError),
    /// A database failure: the answer says "unavailable" with the
    /// incident's id; the detail is in the log under it.
    #[error("{0}")]
    Incident(Incident),
    #[error("{0}")]
    Internal(String),
}

impl From<StorageError> for AppError {
    fn from(e: StorageError) -> Self {
        match e {
            // Our own words (a serial conflict, a missing row), never a
            // database's.
            StorageError::Conflict(m) => AppError::Conflict(m),
            StorageError::NotFound(m) => AppError::NotFound(m),
            e if e.is_outage() => AppError::Incident(Incident::of_storage(
                "a request failed: the database is unavailable",
                &e,
            )),
            other => AppError::Incident(Incident::of_storage(
                "a request failed: database error",
                &other,
            )),
        }
    }
}

/// Why an instance refuses to start; each says what to do.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("master key refused: {0}")]
    Key(String),
}

/// Features refused by the integrity check, by name, with the reason.
type Refusals = BTreeMap<String, String>;

pub struct App {
    pub config: Config,
    pub storage: Arc<dyn Storage>,
    keyring: Keyring,
    vendor_keys: RwLock<Vec<VendorKey>>,
    draining: AtomicBool,
    /// Why the key canary no longer opens, if it stopped (checked periodically).
    key_problem: RwLock<Option<String>>,
    refused: RwLock<Refusals>,
    /// Features the integrity check found mismatched since start.
    integrity_mismatches: AtomicU64,
    /// Of those, the features refused only because this instance does not
    /// trust the vendor key that signed them (a vendor key being added during
    /// a rolling change): nothing says their rows are wrong, so their
    /// heartbeats are still answered; only grants wait for the key.
    untrusted: RwLock<std::collections::BTreeSet<String>>,
    /// When a heartbeat last named a lease newer than its slot (logged once a minute).
    went_back_logged: std::sync::Mutex<Option<std::time::Instant>>,
    pub started_at: DateTime<Utc>,
    /// Protocol sessions of this instance.
    pub sessions: crate::sessions::Sessions,
    /// The operator's auth script, if configured.
    pub auth_hook: Option<crate::auth_hook::AuthHook>,
    /// Derives stand-in secrets for unknown identity ids, so they fail the
    /// handshake exactly like a wrong secret.
    dummy_key: zeroize::Zeroizing<[u8; 32]>,
    /// A stand-in secret sealed at start, opened for an identity id the
    /// database does not hold, so that it costs the unsealing a known id's
    /// secret costs.
    stand_in_sealed: Vec<u8>,
    /// Identities as handshakes and resumptions need them (secrets opened),
    /// known and unknown ids alike; cleared when identities change.
    identity_cache: IdentityCache,
    /// Identities this instance has seen revoked: their sessions stop.
    revoked: RevokedIdentities,
    /// The cluster-wide identity revision this instance has caught up with.
    identity_revision: AtomicI64,
    /// Cluster-wide keys that seal resumption tickets (from the database).
    tickets: TicketKeys,
    /// Serialises reloads of the ticket keys; holds when the last one ran.
    ticket_reload: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// The database clock minus this instance's clock, milliseconds.
    clock_offset_ms: AtomicI64,
    /// Group commit of grants, heartbeat checks, extensions and releases.
    batches: Arc<crate::batch::SeatBatchers>,
    /// Whether the database answers: requests fail fast while it does not.
    gate: Arc<crate::dbgate::DbGate>,
    /// How heartbeats were answered, per lease (for `admin status`).
    heartbeat_stats: HeartbeatStats,
    /// Seat counts for clients' `info` requests (counting scans every slot).
    usage_cache: crate::cache::Cached<Arc<Vec<FeatureView>>>,
    /// The database probe behind healthz, so probes cost no round trip each.
    health_cache: crate::cache::Cached<Result<(), String>>,
}

/// Heartbeat answers per lease since start, by how they were reached.
#[derive(Default)]
struct HeartbeatStats {
    /// Answered from the check read alone (no write).
    read_only: AtomicU64,
    /// Of those, extended in the background afterwards.
    refreshed: AtomicU64,
    /// Extended before the answer (the lease was nearly out).
    written: AtomicU64,
    /// Answered lost.
    lost: AtomicU64,
}

/// Opens the configured storage backend.
pub async fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, StartError> {
    Ok(match &config.database {
        DatabaseConfig::Sqlite(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StartError::Io(format!("cannot create {}: {e}", dir.display())))?;
            }
            Arc::new(SqliteStorage::open(path).await?)
        }
        DatabaseConfig::Mysql(url) => {
            Arc::new(MySqlStorage::connect(url.expose(), config.max_connections).await?)
        }
    })
}

/// Writes a secret file readable only by its owner.
pub fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Loads DATA_DIR/master.key, generating it on first start (SQLite only).
fn load_or_generate_key(config: &Config) -> Result<Vec<MasterKey>, StartError> {
    if let Some(keys) = &config.master_keys {
        return Ok(keys.clone());
    }
    let path = config.data_dir.join("master.key");
    if path.exists() {
        let text = Secret::new(
            std::fs::read_to_string(&path)
                .map_err(|e| StartError::Io(format!("cannot read {}: {e}", path.display())))?,
        );
        return parse_key_list(text.expose())
            .map_err(|e| StartError::Key(format!("{}: {e}", path.display())));
    }
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

fn canary_ctx(key_id: &str) -> SealContext<'_> {
    SealContext::new("keyring_canary", "sealed", key_id)
}

fn license_ctx(id: &str) -> SealContext<'_> {
    SealContext::new("licenses", "sealed", id)
}

fn ticket_key_ctx(id: &str) -> SealContext<'_> {
    SealContext::new("ticket_keys", "sealed", id)
}

fn identity_ctx(id: &str) -> SealContext<'_> {
    SealContext::new("identities", "sealed", id)
}

/// The row id the stand-in secret of unknown identities is sealed under
/// (not an identity id: those are hex).
const STAND_IN_IDENTITY: &str = "stand-in";

/// Why the canary of a key this instance holds does not open.
enum CanaryFault {
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
async fn judge_canary(
    storage: &dyn Storage,
    ring: &Keyring,
    key_id: &str,
) -> Result<CanaryFault, StorageError> {
    let rows = storage.sealed_rows().await?;
    let under: Vec<&crate::storage::SealedRow> = rows
        .iter()
        .filter(|r| r.kind != SealedKind::TicketKey)
        .filter(|r| Keyring::blob_key_id(&r.sealed).ok() == Some(key_id))
        .collect();
    if under.is_empty() {
        return Ok(CanaryFault::Unused);
    }
    let opens = under.iter().any(|r| {
        ring.open(
            SealContext::new(r.kind.table(), "sealed", &r.row_id),
            &r.sealed,
        )
        .is_ok()
    });
    Ok(if opens {
        CanaryFault::Damaged
    } else {
        CanaryFault::WrongKey {
            sealed: under.len(),
        }
    })
}

/// Writes a fresh canary for `key_id` in place of `old`; ticket keys sealed
/// under a key of that id that does not open are replaced too (their
/// tickets could not be opened anyway: clients simply handshake again).
async fn repair_canary(
    storage: &dyn Storage,
    ring: &Keyring,
    key_id: &str,
    old: &[u8],
) -> Result<(), StorageError> {
    storage
        .replace_canary(
            key_id,
            old,
            &ring.seal(canary_ctx(key_id), CANARY_PLAINTEXT),
        )
        .await?;
    for row in storage.sealed_rows().await? {
        let ctx = SealContext::new(row.kind.table(), "sealed", &row.row_id);
        if row.kind == SealedKind::TicketKey
            && Keyring::blob_key_id(&row.sealed).ok() == Some(key_id)
            && ring.open(ctx, &row.sealed).is_err()
        {
            let fresh = zeroize::Zeroizing::new(crate::crypto::random_bytes(32));
            storage
                .reseal(
                    row.kind,
                    &row.row_id,
                    &row.sealed,
                    &ring.seal(ctx, fresh.as_ref()),
                )
                .await?;
        }
    }
    Ok(())
}

/// Refuses to start (and to migrate) while an instance of 0.1 still serves
/// this database: 0.1 answers heartbeats from memory and shortens the
/// expiry later versions promise from, so the two must not run side by
/// side. docs/operations.md ("Upgrading") says how to move from 0.1.
async fn refuse_older_instances(storage: &dyn Storage, config: &Config) -> Result<(), StartError> {
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

/// Proves the configured keys are the ones this database is sealed with.
async fn check_canary(storage: &dyn Storage, ring: &Keyring) -> Result<(), StartError> {
    let canaries = storage.canaries().await?;
    let mut matched = false;
    for (key_id, blob) in &canaries {
        let Some(_) = ring.key(key_id) else { continue };
        match ring.open(canary_ctx(key_id), blob) {
            Ok(p) if p.as_slice() == CANARY_PLAINTEXT => matched = true,
            _ => match judge_canary(storage, ring, key_id).await? {
                CanaryFault::Damaged => {
                    tracing::warn!(key = %key_id, "the key canary row was damaged (the key opens the rows sealed under it): writing a fresh one");
                    repair_canary(storage, ring, key_id, blob).await?;
                    matched = true;
                }
                CanaryFault::Unused => {
                    if let Some(other) = live_instance_with_other_key(storage, ring, key_id).await? {
                        return Err(StartError::Key(format!(
                            "master key '{key_id}' differs from the key '{key_id}' of the running instance {other}; \
                             every instance needs the same keys"
                        )));
                    }
                    tracing::warn!(key = %key_id, "the canary of master key '{key_id}' was written with another key of that id, \
                        and nothing is sealed under it: taking its place");
                    repair_canary(storage, ring, key_id, blob).await?;
                    matched = true;
                }
                CanaryFault::WrongKey { sealed } => {
                    return Err(StartError::Key(format!(
                        "master key '{key_id}' is not the key this database was sealed with (same id, different bytes: \
                         none of the {sealed} license(s) and identity secret(s) sealed under '{key_id}' opens with it); \
                         start with the database's key"
                    )))
                }
            },
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
            .insert_canary(&sealing, &ring.seal(canary_ctx(&sealing), CANARY_PLAINTEXT))
            .await?;
        // Another instance may have raced us with a different key of the same id.
        let again = storage.canaries().await?;
        if let Some((_, blob)) = again.iter().find(|(k, _)| *k == sealing) {
            if ring.open(canary_ctx(&sealing), blob).is_err() {
                return Err(StartError::Key(format!(
                    "another instance registered a different master key '{sealing}' for this database at the same moment"
                )));
            }
        }
    }
    Ok(())
}

/// A live instance (seen within 3 cluster heartbeats' worth of 10 s) that
/// holds a key of id `key_id` other than ours.
async fn live_instance_with_other_key(
    storage: &dyn Storage,
    ring: &Keyring,
    key_id: &str,
) -> Result<Option<String>, StorageError> {
    let ours: Vec<String> = ring.fingerprints().split(',').map(str::to_string).collect();
    let prefix = format!("{key_id}:");
    Ok(storage
        .instances()
        .await?
        .into_iter()
        .filter(|i| i.silent_for_s < 10.0)
        .find(|i| {
            i.key_ids
                .split(',')
                .any(|k| k.starts_with(&prefix) && !ours.iter().any(|o| o == k))
        })
        .map(|i| i.id))
}

/// Read-only canary check for a running instance: some canary of a key we
/// hold must open, and none of ours may fail. `Ok(Some(why))` is a key
/// problem; an error is a database that could not be read (the database
/// gate and healthz say that, not the key check).
async fn verify_canary(
    storage: &dyn Storage,
    ring: &Keyring,
) -> Result<Option<String>, StorageError> {
    let canaries = storage.canaries().await?;
    let mut matched = false;
    for (key_id, blob) in &canaries {
        if ring.key(key_id).is_some() {
            match ring.open(canary_ctx(key_id), blob) {
                Ok(p) if p.as_slice() == CANARY_PLAINTEXT => matched = true,
                _ => match judge_canary(storage, ring, key_id).await? {
                    CanaryFault::Damaged => {
                        tracing::warn!(key = %key_id, "the key canary row was damaged (the key opens the rows sealed under it): writing a fresh one");
                        repair_canary(storage, ring, key_id, blob).await?;
                        matched = true;
                    }
                    CanaryFault::Unused | CanaryFault::WrongKey { .. } => {
                        return Ok(Some(format!(
                            "the canary of master key '{key_id}' no longer opens with this instance's key '{key_id}'"
                        )))
                    }
                },
            }
        }
    }
    Ok((!matched)
        .then(|| "no canary of this instance's master keys is left in the database".into()))
}

/// An admin token as handed out once: `flt_<id>_<secret>`.
fn new_token() -> (String, Secret) {
    use base64::Engine;
    let id = random_hex(8);
    let secret =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::crypto::random_bytes(32));
    let token = Secret::new(format!("flt_{id}_{secret}"));
    (id, token)
}

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

#[derive(Debug, Clone, Serialize)]
pub struct IntegrityReport {
    pub licenses_checked: usize,
    pub refused: Refusals,
    /// Refused features signed by a vendor key this instance does not trust
    /// (their leases are still renewed here).
    pub untrusted: std::collections::BTreeSet<String>,
}

/// One instance in the cluster view.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterMember {
    #[serde(flatten)]
    pub row: crate::storage::InstanceRow,
    /// up, draining or down.
    pub state: &'static str,
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

struct LeasesEnded {
    leases: usize,
    free_at: Option<DateTime<Utc>>,
}

/// What a request on an open session may do (see [`App::admit_request`]).
pub enum Admission {
    /// Serve it; `ticket` is the session's resumption ticket when this is
    /// its first request.
    Serve { ticket: Option<ResumeGrant> },
    /// Answer the identity's refusal, sealed; the session is gone.
    Refuse(IdentityRefusal),
    /// The live table is full: 503, like a handshake would get.
    Full,
}

#[derive(Debug, Clone, Serialize)]
pub struct RotateReport {
    pub sealing_key: String,
    pub resealed: usize,
    pub already_current: usize,
}

impl App {
    /// Everything an instance does before it listens: key, database,
    /// migrations, canary, first admin token, first integrity check.
    pub async fn start(config: Config) -> Result<Arc<App>, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StartError::Io(format!(
                "cannot create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let keys = load_or_generate_key(&config)?;
        let keyring = Keyring::new(keys).map_err(|e| StartError::Key(e.to_string()))?;
        let storage = open_storage(&config).await?;
        refuse_older_instances(storage.as_ref(), &config).await?;
        storage.migrate().await?;
        check_canary(storage.as_ref(), &keyring).await?;
        let gate = Arc::new(crate::dbgate::DbGate::default());
        let stand_in_sealed = keyring.seal(
            identity_ctx(STAND_IN_IDENTITY),
            new_identity_secret().expose().as_bytes(),
        );
        let app = Arc::new(App {
            vendor_keys: RwLock::new(config.vendor_keys.clone()),
            storage: storage.clone(),
            keyring,
            draining: AtomicBool::new(false),
            key_problem: RwLock::new(None),
            refused: RwLock::new(Refusals::new()),
            integrity_mismatches: AtomicU64::new(0),
            untrusted: RwLock::default(),
            went_back_logged: std::sync::Mutex::new(None),
            started_at: Utc::now(),
            sessions: crate::sessions::Sessions::new(config.max_sessions, config.session_idle),
            auth_hook: config.auth_script.clone().map(|p| {
                crate::auth_hook::AuthHook::new(p, config.auth_timeout, config.auth_max_concurrent)
            }),
            dummy_key: zeroize::Zeroizing::new(
                crate::crypto::random_bytes(32)
                    .try_into()
                    .expect("32 bytes"),
            ),
            stand_in_sealed,
            identity_cache: IdentityCache::new(
                crate::identities::CACHE_CAPACITY,
                crate::identities::CACHE_TTL,
            ),
            revoked: RevokedIdentities::default(),
            identity_revision: AtomicI64::new(storage.identity_revision().await?),
            tickets: TicketKeys::default(),
            ticket_reload: tokio::sync::Mutex::new(None),
            clock_offset_ms: AtomicI64::new(0),
            batches: Arc::new(crate::batch::SeatBatchers::start(
                storage.clone(),
                gate.clone(),
                config.lease_hold,
                config.lease_ttl,
            )),
            gate,
            heartbeat_stats: HeartbeatStats::default(),
            usage_cache: crate::cache::Cached::new(USAGE_CACHE),
            health_cache: crate::cache::Cached::new(HEALTH_CACHE),
            config,
        });
        app.sync_clock().await?;
        app.refresh_ticket_keys()
            .await
            .map_err(|e| StartError::Io(format!("resumption ticket keys: {e}")))?;
        app.bootstrap_token().await?;
        // Logs (and counts) what it refuses.
        app.verify_integrity()
            .await
            .map_err(|e| StartError::Io(e.to_string()))?;
        Ok(app)
    }

    async fn bootstrap_token(&self) -> Result<(), StartError> {
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

    pub fn instance_id(&self) -> &str {
        &self.config.instance_id
    }

    pub fn backend(&self) -> Backend {
        self.storage.backend()
    }

    pub fn key_ids(&self) -> Vec<String> {
        self.keyring.key_ids()
    }

    /// Trusts one more vendor key (the demo key of `serve --demo`).
    pub fn trust_vendor_key(&self, key: VendorKey) {
        let mut keys = self.vendor_keys.write().expect("lock");
        if !keys.contains(&key) {
            keys.push(key);
        }
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Ok when this instance can serve; otherwise why not.
    pub async fn health(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining: this instance is shutting down".into());
        }
        if let Some(why) = self.key_problem.read().expect("lock").clone() {
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

    /// Runs a database operation a client waits for, unless the database
    /// failed moments ago (then fails at once), and records what it found.
    async fn gated<T, F, Fut>(&self, op: F) -> Result<T, StorageError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, StorageError>>,
    {
        self.gate
            .run(async {
                let r = op().await;
                self.gate.observe(&r);
                r
            })
            .await
    }

    /// The error of a database operation that failed with `detail` (text
    /// from a batch: database words). While the database is known to be
    /// away the answer carries the outage's incident (the detail goes to the
    /// log at warn level, as one request among many); otherwise a new
    /// incident is logged at error level.
    fn database_failed(&self, what: &str, detail: &dyn std::fmt::Display) -> AppError {
        AppError::Incident(match self.gate.incident() {
            Some(outage) => {
                tracing::warn!(incident = %outage.id(), error = %detail, "{what}");
                outage
            }
            None => Incident::record(what, detail),
        })
    }

    // ---------------------------------------------------------------- licenses

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
                        .keyring
                        .open(license_ctx(&st.license_id), &st.sealed)
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
            sealed: self
                .keyring
                .seal(license_ctx(&v.def.license_id), v.raw.as_bytes()),
            features: v.def.features.clone(),
        };
        let outcome = self.storage.apply_license(&record).await?;
        tracing::info!(license = %v.def.license_id, serial = v.def.serial, ?outcome, "license applied");
        self.verify_integrity().await?;
        self.usage_cache.clear();
        Ok((outcome, v))
    }

    /// Whether a stored license opens and would verify but for a vendor key
    /// this instance does not trust.
    fn only_vendor_key_untrusted(&self, license_id: &str, sealed: &[u8]) -> bool {
        let Ok(text) = self.keyring.open(license_ctx(license_id), sealed) else {
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
    fn open_license(
        &self,
        license_id: &str,
        sealed: &[u8],
        digest: &str,
    ) -> Result<license::VerifiedLicense, String> {
        let text = self
            .keyring
            .open(license_ctx(license_id), sealed)
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
    fn alert_mismatches(&self, before: &Refusals, report: &IntegrityReport) {
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

    async fn integrity_pass(&self) -> Result<IntegrityReport, AppError> {
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
    /// counts once per second however many clients ask.
    pub async fn features_cached(&self) -> Result<Arc<Vec<FeatureView>>, AppError> {
        self.usage_cache
            .get(|| async { self.features().await.map(Arc::new) })
            .await
    }

    pub async fn features(&self) -> Result<Vec<FeatureView>, AppError> {
        let rows = self.gated(|| self.storage.feature_rows()).await?;
        let refused = self.refused.read().expect("lock").clone();
        Ok(usage_by_name(&rows)
            .into_iter()
            .map(|usage| FeatureView {
                refused: refused.get(&usage.name).cloned(),
                usage,
            })
            .collect())
    }

    // ------------------------------------------------------------------ seats

    /// Grants one seat of `req.feature` (group-committed with concurrent
    /// logins). The grant's `promise` rests on the transaction that took the
    /// slot (or, for a resent request id, on a fresh read of its row).
    pub async fn grant(&self, req: &GrantRequest) -> Result<Grant, SeatError> {
        // Feature names are spelled exactly as licensed (A-Z a-z 0-9 _ . -);
        // anything else names no feature, whatever a database collation says.
        if !crate::domain::valid_name(&req.feature) {
            return Err(SeatError::UnknownFeature(
                req.feature.chars().take(64).collect(),
            ));
        }
        if let Some(why) = self.refused.read().expect("lock").get(&req.feature) {
            return Err(SeatError::Refused(req.feature.clone(), why.clone()));
        }
        let g = self.batches.grant(req.clone()).await?;
        // This instance's own clients see their change at once; others'
        // changes show within USAGE_CACHE.
        self.usage_cache.clear();
        Ok(g)
    }

    /// Renews `leases` of `holder`. Every answer rests on a read of the
    /// lease's row made for this heartbeat (one statement for all concurrent
    /// heartbeats, no lock, no write), so a release through any instance, a
    /// force release or a restore is seen by the next heartbeat; this
    /// instance's memory is never the evidence.
    ///
    /// A lease whose recorded expiry still covers a full `lease_ttl` is
    /// answered from the read alone. One with at least half a TTL left is
    /// answered with what is left and extended in the background. The rest
    /// are extended first (a conditional write, batched) and answered from
    /// that write. Leases of a feature whose license window closed or that
    /// the integrity check refuses are answered lost.
    pub async fn renew(&self, holder: &str, leases: &[LeaseRef]) -> Result<Vec<Renewal>, AppError> {
        let ttl = self.config.lease_ttl;
        let checks = self
            .batches
            .check(holder, leases)
            .await
            .map_err(|e| self.database_failed("a heartbeat's lease check failed", &e))?;
        let refused = self.refused.read().expect("lock").clone();
        let untrusted = self.untrusted.read().expect("lock").clone();
        let mut out: Vec<Option<Renewal>> = Vec::with_capacity(leases.len());
        let (mut urgent, mut due) = (Vec::new(), Vec::new());
        for (lease, check) in leases.iter().zip(checks) {
            let live = match check {
                Check::Live(live)
                    if !live.window_closed()
                        && (!refused.contains_key(&live.feature)
                            || untrusted.contains(&live.feature)) =>
                {
                    live
                }
                Check::WentBack => {
                    // Once per minute at most: a client that keeps
                    // heartbeating a lease lost to a restore would flood it.
                    let mut last = self.went_back_logged.lock().expect("lock");
                    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        *last = Some(std::time::Instant::now());
                        tracing::warn!(%lease, "a heartbeat names a lease newer than its slot: the database was restored or lost transactions (run `floatlm admin quarantine` after a restore), or the client made the lease id up");
                    }
                    out.push(Some(Renewal::Lost));
                    continue;
                }
                _ => {
                    out.push(Some(Renewal::Lost));
                    continue;
                }
            };
            let left = live.left();
            if left >= ttl / 2 {
                if left < ttl || live.cap < ttl {
                    due.push(*lease);
                }
                out.push(Some(Renewal::Renewed(live.promise(ttl))));
            } else {
                urgent.push((*lease, live));
                out.push(None);
            }
        }
        let stats = &self.heartbeat_stats;
        let answered_live = out
            .iter()
            .filter(|o| matches!(o, Some(Renewal::Renewed(_))))
            .count();
        stats
            .read_only
            .fetch_add(answered_live as u64, Ordering::Relaxed);
        if !due.is_empty() {
            let queued = self.batches.refresh(holder, &due);
            stats.refreshed.fetch_add(queued as u64, Ordering::Relaxed);
        }
        if !urgent.is_empty() {
            let targets: Vec<LeaseRef> = urgent.iter().map(|(l, _)| *l).collect();
            // A write that cannot be made now (the row is locked by a stalled
            // instance, the database just failed) leaves the read as the
            // evidence: it backs a shorter promise, which is still true.
            let written = match self.batches.extend(holder, &targets).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, leases = targets.len(), "could not extend nearly expired leases; answering from their reads");
                    vec![Extension::Busy; targets.len()]
                }
            };
            stats
                .written
                .fetch_add(urgent.len() as u64, Ordering::Relaxed);
            let hold =
                chrono::Duration::from_std(self.config.lease_hold).unwrap_or(chrono::Duration::MAX);
            let mut answers = urgent
                .into_iter()
                .zip(written)
                .map(|((_, read), ext)| match ext {
                    // The write matched: the lease was live at `now` and is held
                    // at least `lease_hold` past it, with a cap of at least
                    // `lease_ttl`.
                    Extension::Extended(now) => Renewal::Renewed(
                        LiveLease {
                            now,
                            expires_at: now + hold,
                            cap: read.cap.max(ttl),
                            ..read
                        }
                        .promise(ttl),
                    ),
                    Extension::Busy => Renewal::Renewed(read.promise(ttl)),
                    Extension::Lost => Renewal::Lost,
                });
            for o in out.iter_mut().filter(|o| o.is_none()) {
                *o = answers.next();
            }
        }
        let out: Vec<Renewal> = out
            .into_iter()
            .map(|o| o.unwrap_or(Renewal::Lost))
            .collect();
        let lost = out.iter().filter(|r| **r == Renewal::Lost).count();
        stats.lost.fetch_add(lost as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// How heartbeats were answered since start, per lease.
    pub fn heartbeat_counts(&self) -> serde_json::Value {
        let s = &self.heartbeat_stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "answered_from_read": n(&s.read_only),
            "extended_in_background": n(&s.refreshed),
            "extended_before_answer": n(&s.written),
            "lost": n(&s.lost),
        })
    }

    /// Releases `holder`'s `lease`; false when it was not live any more.
    pub async fn release(&self, holder: &str, lease: LeaseRef) -> Result<bool, AppError> {
        let released = self
            .batches
            .release(holder, lease)
            .await
            .map_err(|e| self.database_failed("a release failed", &e))?
            .is_some();
        self.usage_cache.clear();
        Ok(released)
    }

    /// An operator's release of any lease: its holder is told it lost the
    /// seat on its next heartbeat; the seat is free again once every promise
    /// already given for it has run out. Returns when (database clock).
    pub async fn force_release(&self, lease: LeaseRef) -> Result<DateTime<Utc>, AppError> {
        let free_at = self.storage.force_release(lease).await?;
        self.usage_cache.clear();
        match free_at {
            Some(at) => {
                tracing::info!(%lease, free_at = %at, "lease force-released by an operator");
                Ok(at)
            }
            None => Err(AppError::NotFound(format!(
                "lease {lease} is not live (already released, expired or re-granted)"
            ))),
        }
    }

    /// After the database went back in time: ends every lease and holds
    /// every seat for `hold`, so no seat is granted while a promise given
    /// before may still run. The default hold is the longest `lease_ttl` any
    /// instance recorded (and this one's), plus the clock margin and a second
    /// of slack. Returns the slots held and until when (database clock).
    pub async fn quarantine(
        &self,
        hold: Option<Duration>,
    ) -> Result<(u64, DateTime<Utc>), AppError> {
        let hold = match hold {
            Some(h) => h,
            None => {
                let longest = self
                    .storage
                    .instances()
                    .await?
                    .iter()
                    .map(|i| Duration::from_millis(i.lease_ttl_ms.max(0) as u64))
                    .fold(self.config.lease_ttl, Duration::max);
                longest + CLOCK_MARGIN + Duration::from_secs(1)
            }
        };
        let n = self.storage.quarantine(hold).await?;
        let until =
            self.storage.now().await? + chrono::Duration::from_std(hold).unwrap_or_default();
        self.usage_cache.clear();
        tracing::warn!(
            slots = n,
            hold_s = hold.as_secs_f64(),
            %until,
            "quarantine: every lease ended, every seat held by nobody until the promises given before have run out"
        );
        Ok((n, until))
    }

    // -------------------------------------------------------------- identities

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
                .keyring
                .seal(identity_ctx(&id), secret.expose().as_bytes()),
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
                .keyring
                .seal(identity_ctx(id), secret.expose().as_bytes()),
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
    fn open_identity_secret(&self, row: &IdentityRow) -> Result<Secret, String> {
        self.open_sealed_secret(&row.id, &row.sealed)
    }

    fn open_sealed_secret(&self, id: &str, sealed: &[u8]) -> Result<Secret, String> {
        let damaged = |what: &str| {
            format!(
                "damaged: its sealed secret {what} (the row was edited, or copied from another row); \
                 revoke it and create a new identity"
            )
        };
        let secret = self
            .keyring
            .open(identity_ctx(id), sealed)
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
        let Some(row) = self.gated(|| self.storage.identity(id)).await? else {
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
        let row = self.gated(|| self.storage.identity(id)).await?;
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
    /// force release ([`App::force_release`]).
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
            .unwrap_or_else(|| self.db_now());
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
    fn note_revoked(&self, id: &str, at: DateTime<Utc>) -> usize {
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
    async fn end_leases_of(&self, holder: &str) -> Result<LeasesEnded, AppError> {
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
            self.usage_cache.clear();
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
            .filter(|e| *e <= self.db_now())
            .map(|e| IdentityRefusal::expired(&session.identity_id, e))
    }

    /// How long `session`'s identity may still be served (until its
    /// expiry, database clock); None when it does not expire. Promises are
    /// capped by it: an identity holds no seat past its expiry.
    pub fn identity_time_left(&self, session: &crate::sessions::Session) -> Option<Duration> {
        session
            .identity_expires
            .map(|e| (e - self.db_now()).to_std().unwrap_or(Duration::ZERO))
    }

    /// Decides what a request on `session_id` may do once its envelope
    /// opened: a refused identity ends the session; a pending session
    /// becomes live and earns its resumption ticket.
    pub fn admit_request(&self, session_id: &str, found: &Found) -> Admission {
        let session = found.session();
        let why = match found {
            Found::Ended(_, why) => Some(why.clone()),
            _ => self
                .identity_refusal(session)
                .inspect(|_| self.sessions.count_refused()),
        };
        if let Some(why) = why {
            self.sessions.end(session_id);
            return Admission::Refuse(why);
        }
        let Found::Pending(_) = found else {
            return Admission::Serve { ticket: None };
        };
        match self.sessions.promote(session_id, session) {
            Promotion::Promoted => {
                let ticket = self.issue_ticket(&session.identity_id, session.identity_expires);
                if ticket.is_some() {
                    self.sessions.count_ticket();
                }
                Admission::Serve { ticket }
            }
            Promotion::AlreadyLive => Admission::Serve { ticket: None },
            Promotion::Ended(why) => {
                self.sessions.end(session_id);
                Admission::Refuse(why)
            }
            Promotion::Full => Admission::Full,
        }
    }

    /// Ends a lease granted to an identity that was refused while the grant
    /// ran (its client is never told of it), like an operator would.
    pub async fn end_refused_grant(&self, lease: LeaseRef) {
        match self.storage.force_release(lease).await {
            Ok(_) => self.usage_cache.clear(),
            Err(e) => {
                tracing::warn!(%lease, error = %e, "could not end the lease of a refused identity; it runs out by itself")
            }
        }
    }

    // ------------------------------------------------------------------ tokens

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

    pub async fn revoke_token(&self, id: &str) -> Result<(), AppError> {
        if self.storage.revoke_token(id).await? {
            Ok(())
        } else {
            Err(AppError::NotFound(format!(
                "token {id} does not exist or is already revoked"
            )))
        }
    }

    // --------------------------------------------------------------- rotation

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
        let lacking: Vec<String> = self
            .cluster()
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
        check_canary(self.storage.as_ref(), &self.keyring)
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
            let ctx = SealContext::new(row.kind.table(), "sealed", &row.row_id);
            let plain = self.keyring.open(ctx, &row.sealed).map_err(|e| {
                AppError::Conflict(format!(
                    "{} row {} cannot be re-sealed: {e}",
                    row.kind.table(),
                    row.row_id
                ))
            })?;
            let new = self.keyring.seal(ctx, &plain);
            if self
                .storage
                .reseal(row.kind, &row.row_id, &row.sealed, &new)
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

    // ------------------------------------------------------ clock and tickets

    /// The database clock, estimated from this instance's clock and the
    /// offset measured at start and on every cluster heartbeat. Deadlines
    /// that need no round trip of their own (ticket expiry) use it.
    pub fn db_now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.clock_offset_ms.load(Ordering::Relaxed))
    }

    async fn sync_clock(&self) -> Result<(), StorageError> {
        let before = Utc::now();
        let db = self.storage.now().await?;
        let after = Utc::now();
        let mid = before + (after - before) / 2;
        self.clock_offset_ms
            .store((db - mid).num_milliseconds(), Ordering::Relaxed);
        Ok(())
    }

    /// The ticket keys this instance holds (ids: Unix second each period starts).
    pub fn ticket_key_ids(&self) -> Vec<i64> {
        self.tickets.ids()
    }

    fn ticket_rotation_s(&self) -> i64 {
        self.config.ticket_rotation.as_secs().max(1) as i64
    }

    /// Makes sure the current period's ticket key exists (the first instance
    /// to need it creates it) and that this instance knows it.
    pub async fn refresh_ticket_keys(&self) -> Result<(), AppError> {
        let current = tickets::period_start(self.db_now(), self.ticket_rotation_s());
        if self.tickets.contains(current) {
            return Ok(());
        }
        let key = zeroize::Zeroizing::new(crate::crypto::random_bytes(32));
        let sealed = self
            .keyring
            .seal(ticket_key_ctx(&current.to_string()), key.as_ref());
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
    async fn reload_ticket_keys(&self) -> Result<(), AppError> {
        let oldest_useful = self.db_now().timestamp()
            - self.ticket_rotation_s()
            - self.config.ticket_lifetime.as_secs() as i64;
        let mut keys = BTreeMap::new();
        for (id, sealed) in self.storage.ticket_keys().await? {
            if id < oldest_useful {
                continue;
            }
            let opened = self.keyring.open(ticket_key_ctx(&id.to_string()), &sealed);
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
        self.tickets.replace(keys);
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
        let now = self.db_now();
        let lifetime = chrono::Duration::from_std(self.config.ticket_lifetime).ok()?;
        let expires = identity_expires.map_or(now + lifetime, |e| e.min(now + lifetime));
        let (ticket, secret) = self.tickets.issue(now, expires, identity_id)?;
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
    async fn open_ticket(
        &self,
        ticket: &[u8],
    ) -> Result<OpenedTicket, Result<TicketError, AppError>> {
        let mut lookup_failed = None;
        let opened = match self.tickets.open(ticket) {
            Err(TicketError::UnknownKey(id))
                if self.tickets.newest().is_none_or(|n| id > n)
                    && id <= self.db_now().timestamp() + 60 =>
            {
                let mut last = self.ticket_reload.lock().await;
                if !self.tickets.contains(id)
                    && last.is_none_or(|t| t.elapsed() >= Duration::from_millis(250))
                {
                    *last = Some(std::time::Instant::now());
                    if let Err(e) = self.reload_ticket_keys().await {
                        tracing::warn!(error = %e, "could not reload ticket keys");
                        lookup_failed = Some(e);
                    }
                }
                self.tickets.open(ticket)
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
        let now = self.db_now();
        if t.expires_at <= now {
            return Err(refused(format!(
                "ticket of identity {} expired at {}",
                t.identity_id, t.expires_at
            )));
        }
        // The row itself, not the identity cache: a resumption is rare (a
        // failover, a forgotten session), and so a revocation anywhere is
        // refused here at once.
        let row = self
            .gated(|| self.storage.identity(&t.identity_id))
            .await?
            .ok_or_else(|| refused(format!("identity {} no longer exists", t.identity_id)))?;
        let identity = IdentityInfo {
            id: row.id,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
        };
        if let Some(why) = self
            .revoked
            .get(&identity.id)
            .or_else(|| identity.refusal(now))
        {
            return Err(refused(why.message));
        }
        Ok((identity, t))
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

    fn down_after(&self) -> Duration {
        self.config.cluster_heartbeat * 3
    }

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

    /// Periodic upkeep: integrity check and request-id purge, until `stop`.
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
        }
    }
}
