//! The running instance: storage, keyring and rules wired together.
//!
//! HTTP handlers and the CLI call into [`App`]. This file holds what wires
//! the concerns together: start-up (migrations, first admin token), health,
//! draining and the outage gate around database calls. Each concern has its
//! own file, named as in `storage` and `domain`:
//!
//! | file | concern |
//! |---|---|
//! | `admission.rs` | who may open a session, the session table, the client's address |
//! | `seats.rs` | logins, grants, heartbeats, releases, force release, quarantine |
//! | `licenses.rs` | applying licenses, features, the integrity check |
//! | `access.rs` | identities (and their cache), admin tokens |
//! | `tickets.rs` | resumption tickets and their cluster-wide keys |
//! | `keys.rs` | master keys, the key canary, sealing contexts, rotation |
//! | `cluster.rs` | the cluster view, drain/remove, database watch, maintenance |
//! | `clock.rs` | the database clock |
//! | `scrape.rs` | what `GET /metrics` reads at scrape time |
//! | `backup.rs` | backups on demand and on a schedule |

mod access;
mod admission;
mod assignment;
mod backup;
mod clock;
mod cluster;
mod keys;
mod licenses;
mod scrape;
mod seats;
mod tickets;
mod usage;

pub use access::{Admission, IdentityView, RevokeReport, TokenView};
pub use admission::SessionRefusal;
pub use backup::{BackupListing, CreatedBackup};
pub use cluster::ClusterMember;
pub use keys::RotateReport;
pub use licenses::{FeatureView, IntegrityReport, LicenseView};
pub use seats::{Login, LoginGrant, Refused};
// What the concerns share with each other (their `pub(super)` items).
use access::*;
use cluster::*;
use keys::*;

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
use crate::crypto::keyring::{KeyLoadError, Keyring, MasterKey, SealError, SealedColumn};
use crate::crypto::tickets::{OpenedTicket, TicketError, TicketKeys};
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

pub use crate::storage::SeatFailure;
use crate::storage::{
    mysql::MySqlStorage, sqlite::SqliteStorage, usage_by_name, ApplyOutcome, Backend, Extension,
    IdentityRow, InstanceBeat, LicenseRecord, Storage, StorageError, TokenRow,
};

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
            StorageError::Conflict(m)
            | StorageError::LockTimeout(m)
            | StorageError::Corrupt(m)
            | StorageError::Stopped(m) => AppError::Conflict(m),
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

/// The running instance. Handlers call its methods, never its fields, so
/// every decision stays here: the fields are private (`storage` is still
/// public for tests; tests/layering.rs keeps `http/` off it).
pub struct App {
    config: Config,
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
    started_at: DateTime<Utc>,
    /// Protocol sessions of this instance.
    sessions: crate::sessions::Sessions,
    /// The operator's auth script, if configured.
    auth_hook: Option<crate::auth_hook::AuthHook>,
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
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Refused logins not yet written as usage records (app/usage.rs).
    denials: std::sync::Mutex<Vec<crate::domain::usage::Denial>>,
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
        check_canary(storage.as_ref(), &keyring, &config.instance_id).await?;
        let gate = Arc::new(crate::dbgate::DbGate::default());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let stand_in_sealed = keyring.seal(
            SealedColumn::Identity.at(STAND_IN_IDENTITY),
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
                metrics.clone(),
            )),
            gate,
            heartbeat_stats: HeartbeatStats::default(),
            usage_cache: crate::cache::Cached::new(USAGE_CACHE),
            health_cache: crate::cache::Cached::new(HEALTH_CACHE),
            metrics,
            denials: Default::default(),
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

    /// The validated configuration this instance started with (read-only;
    /// for the CLI and tests: handlers ask the methods that decide).
    pub fn config(&self) -> &Config {
        &self.config
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

    /// Whether the web console is served under `/ui/` (`ui`).
    pub fn console_on(&self) -> bool {
        self.config.ui
    }

    /// The largest request body either listener reads (`max_body_bytes`).
    pub fn max_body_bytes(&self) -> usize {
        self.config.max_body_bytes
    }

    /// How long a draining instance keeps serving before its listeners
    /// stop accepting (`drain_delay`).
    pub fn drain_delay(&self) -> Duration {
        self.config.drain_delay
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
}
