//! The running instance: one service per concern, wired together.
//!
//! Each concern is a service that owns its own state and lives in its own
//! file, named as in `storage` and `domain`. [`App`] only wires them: it
//! holds an `Arc` of each, the configuration, the storage and the metrics,
//! starts them in order and runs the periodic tasks that drive several of
//! them (app/tasks.rs). HTTP handlers take the one service they need
//! (axum `FromRef` on the `App`, which is the routers' state), never the
//! App itself.
//!
//! | file | service | concern |
//! |---|---|---|
//! | `clock.rs` | [`Clock`] | the database clock |
//! | `keys.rs` | [`Keys`] | master keys, the key canary, sealing contexts, rotation |
//! | `cluster.rs` | [`Cluster`] | the cluster view, health, drain/remove, database watch |
//! | `licenses.rs` | [`Licenses`] | applying licenses, features, the integrity check |
//! | `access.rs` | [`Access`] | identities (and their cache), admin tokens, the auth hook |
//! | `tickets.rs` | [`Tickets`] | resumption tickets and their cluster-wide keys |
//! | `admission.rs` | [`Admission`] | who may open a session, the session table, the client's address |
//! | `assignment.rs` | [`Assignments`] | which features an identity may use |
//! | `usage.rs` | [`Usage`] | usage records: denials, upkeep, the report |
//! | `seats.rs` | [`Seats`] | logins, grants, heartbeats, releases, force release, quarantine |
//! | `backup.rs` | [`Backups`] | backups on demand and on a schedule |
//! | `scrape.rs` | [`Scrape`] | what `GET /metrics` reads at scrape time |
//! | `tasks.rs` | (App) | maintenance and the cluster heartbeat |
//!
//! Services depend on each other in that order only (a service holds an
//! `Arc` of those above it that it calls, never the App): no cycles. What two
//! concerns share without one owning it is passed to both as infrastructure:
//! the storage, the outage gate ([`gated`]), the metrics, the configuration,
//! and the session table (admission decides on it; access ends a revoked
//! identity's sessions in it).

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
mod tasks;
mod tickets;
mod usage;

pub use access::{Access, IdentityView, RevokeReport, TokenView};
pub use admission::{Admission, RequestAdmission, SessionRefusal};
pub use assignment::Assignments;
pub use backup::{BackupListing, Backups, CreatedBackup};
pub use clock::Clock;
pub use cluster::{Cluster, ClusterMember};
pub use keys::{Keys, RotateReport};
pub use licenses::{FeatureView, IntegrityReport, LicenseView, Licenses};
pub use scrape::Scrape;
pub use seats::batch::SeatBatchers;
pub use seats::{Login, LoginGrant, Refused, Seats};
pub use tickets::Tickets;
pub use usage::Usage;
// What the concerns share with each other (their `pub(super)` items).
use cluster::*;
use keys::*;

use axum::extract::FromRef;
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
use crate::dbgate::DbGate;
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
use crate::metrics::Metrics;
use crate::sessions::{Found, Promotion, Sessions};
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

/// The running instance: the services, wired. It is the routers' state:
/// each handler takes the service it needs through [`FromRef`], so none
/// reaches through the App. Cloning it (once per request) clones one `Arc`.
#[derive(Clone)]
pub struct App {
    wired: Arc<Wired>,
}

impl std::ops::Deref for App {
    type Target = Wired;
    fn deref(&self) -> &Wired {
        &self.wired
    }
}

/// What an [`App`] holds: the configuration, the storage and each service.
pub struct Wired {
    config: Arc<Config>,
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    clock: Arc<Clock>,
    keys: Arc<Keys>,
    cluster: Arc<Cluster>,
    licenses: Arc<Licenses>,
    access: Arc<Access>,
    tickets: Arc<Tickets>,
    admission: Arc<Admission>,
    assignments: Arc<Assignments>,
    usage: Arc<Usage>,
    seats: Arc<Seats>,
    backups: Arc<Backups>,
    scrape: Arc<Scrape>,
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
    /// migrations, canary, the services wired in order, first admin token,
    /// first integrity check.
    pub async fn start(config: Config) -> Result<Arc<App>, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StartError::Io(format!(
                "cannot create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let config = Arc::new(config);
        let keys = load_or_generate_key(&config)?;
        let keyring = Keyring::new(keys).map_err(|e| StartError::Key(e.to_string()))?;
        let storage = open_storage(&config).await?;
        refuse_older_instances(storage.as_ref(), &config).await?;
        storage.migrate().await?;
        check_canary(storage.as_ref(), &keyring, &config.instance_id).await?;
        let gate = Arc::new(DbGate::default());
        let metrics = Arc::new(Metrics::new());
        let sessions = Arc::new(Sessions::new(config.max_sessions, config.session_idle));
        let clock = Arc::new(Clock::new(storage.clone()));
        let keys = Arc::new(Keys::new(keyring, storage.clone(), config.clone()));
        let cluster = Arc::new(Cluster::new(
            storage.clone(),
            config.clone(),
            gate.clone(),
            keys.clone(),
        ));
        let licenses = Arc::new(Licenses::new(
            storage.clone(),
            config.clone(),
            gate.clone(),
            keys.clone(),
        ));
        let access = Arc::new(
            Access::new(
                storage.clone(),
                config.clone(),
                gate.clone(),
                sessions.clone(),
                clock.clone(),
                keys.clone(),
                licenses.clone(),
            )
            .await?,
        );
        let tickets = Arc::new(Tickets::new(
            storage.clone(),
            config.clone(),
            gate.clone(),
            clock.clone(),
            keys.clone(),
            access.clone(),
        ));
        let admission = Arc::new(Admission::new(
            config.clone(),
            sessions.clone(),
            clock.clone(),
            cluster.clone(),
            access.clone(),
            tickets.clone(),
        ));
        let assignments = Arc::new(Assignments::new(
            storage.clone(),
            config.clone(),
            gate.clone(),
            metrics.clone(),
            licenses.clone(),
        ));
        let usage = Arc::new(Usage::new(
            storage.clone(),
            config.clone(),
            metrics.clone(),
            clock.clone(),
        ));
        let batches = Arc::new(seats::batch::SeatBatchers::start(
            storage.clone(),
            gate.clone(),
            config.lease_hold,
            config.lease_ttl,
            metrics.clone(),
        ));
        let seats = Arc::new(Seats::new(seats::Parts {
            storage: storage.clone(),
            config: config.clone(),
            gate: gate.clone(),
            metrics: metrics.clone(),
            batches,
            licenses: licenses.clone(),
            access: access.clone(),
            assignments: assignments.clone(),
            usage: usage.clone(),
        }));
        let backups = Arc::new(Backups::new(
            storage.clone(),
            config.clone(),
            gate.clone(),
            metrics.clone(),
            clock.clone(),
            keys.clone(),
        ));
        let scrape = Arc::new(Scrape::new(
            storage.clone(),
            config.clone(),
            metrics.clone(),
            sessions,
            licenses.clone(),
            cluster.clone(),
        ));
        clock.sync_clock().await?;
        tickets
            .refresh_ticket_keys()
            .await
            .map_err(|e| StartError::Io(format!("resumption ticket keys: {e}")))?;
        access.bootstrap_token().await?;
        // Logs (and counts) what it refuses.
        licenses
            .verify_integrity()
            .await
            .map_err(|e| StartError::Io(e.to_string()))?;
        Ok(Arc::new(App {
            wired: Arc::new(Wired {
                config,
                storage,
                metrics,
                clock,
                keys,
                cluster,
                licenses,
                access,
                tickets,
                admission,
                assignments,
                usage,
                seats,
                backups,
                scrape,
            }),
        }))
    }

    /// The validated configuration this instance started with (read-only;
    /// for the CLI and tests: handlers ask the services that decide).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The storage this instance runs on, for tests and the CLI to inspect
    /// what the services wrote; handlers never use it (tests/layering.rs).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// This instance's Prometheus metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// This instance's id (answered in a header and in healthz).
    pub fn instance_id(&self) -> &str {
        &self.config.instance_id
    }

    /// Which database backend this instance runs on.
    pub fn backend(&self) -> Backend {
        self.storage.backend()
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

    /// The database clock as this instance follows it.
    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// Master keys, the key canary, rotation.
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// The cluster view, health, drain and removal.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Licenses, features and the integrity check.
    pub fn licenses(&self) -> &Arc<Licenses> {
        &self.licenses
    }

    /// Identities, admin tokens, the auth hook.
    pub fn access(&self) -> &Arc<Access> {
        &self.access
    }

    /// Resumption tickets and their keys.
    pub fn tickets(&self) -> &Arc<Tickets> {
        &self.tickets
    }

    /// Session admission and the session table.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// Feature assignment per identity.
    pub fn assignments(&self) -> &Arc<Assignments> {
        &self.assignments
    }

    /// Usage records and the usage report.
    pub fn usage(&self) -> &Arc<Usage> {
        &self.usage
    }

    /// Logins, grants, heartbeats and releases.
    pub fn seats(&self) -> &Arc<Seats> {
        &self.seats
    }

    /// Backups on demand and on a schedule.
    pub fn backups(&self) -> &Arc<Backups> {
        &self.backups
    }

    /// What `GET /metrics` reads at scrape time.
    pub fn scrape(&self) -> &Arc<Scrape> {
        &self.scrape
    }
}

/// Each handler takes the one service it needs from the routers' state.
macro_rules! service_from_app {
    ($($field:ident: $ty:ty),* $(,)?) => {$(
        impl FromRef<App> for Arc<$ty> {
            fn from_ref(app: &App) -> Self {
                app.$field.clone()
            }
        }
    )*};
}

service_from_app!(
    metrics: Metrics,
    keys: Keys,
    cluster: Cluster,
    licenses: Licenses,
    access: Access,
    tickets: Tickets,
    admission: Admission,
    assignments: Assignments,
    usage: Usage,
    seats: Seats,
    backups: Backups,
    scrape: Scrape,
);

/// Runs a database operation a client waits for, unless the database
/// failed moments ago (then fails at once), and records what it found.
async fn gated<T, F, Fut>(gate: &DbGate, op: F) -> Result<T, StorageError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    gate.run(async {
        let r = op().await;
        gate.observe(&r);
        r
    })
    .await
}

/// The error of a database operation that failed with `detail` (text
/// from a batch: database words). While the database is known to be
/// away the answer carries the outage's incident (the detail goes to the
/// log at warn level, as one request among many); otherwise a new
/// incident is logged at error level.
fn database_failed(gate: &DbGate, what: &str, detail: &dyn std::fmt::Display) -> AppError {
    AppError::Incident(match gate.incident() {
        Some(outage) => {
            tracing::warn!(incident = %outage.id(), error = %detail, "{what}");
            outage
        }
        None => Incident::record(what, detail),
    })
}
