//! The rows storage answers in and is given, shared by both backends
//! (licenses, identities, tokens, instances, sealed blobs, batched
//! renewals), how each is read from a result row by column name, and the
//! one conversion of a stored time into a UTC time.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;

use super::{SlotRead, StorageError};
use crate::crypto::{SealContext, SealedColumn};
use crate::domain::license::FeatureDef;
use crate::domain::seats::{LeaseInfo, LeaseRef, Role};
use crate::domain::slots::{FeatureRow, SlotState};

/// A verified, sealed license ready to be stored.
#[derive(Debug, Clone)]
pub struct LicenseRecord {
    pub license_id: String,
    pub serial: i64,
    pub customer: String,
    pub vendor_key_id: String,
    pub digest: String,
    /// The license file, sealed for (licenses, sealed, license_id).
    pub sealed: Vec<u8>,
    pub features: Vec<FeatureDef>,
    /// The stored row of this serial is damaged (its blob does not open, or
    /// its digest was edited) and this is the same file: rewrite it.
    pub repair: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ApplyOutcome {
    Created,
    Replaced {
        previous_serial: i64,
    },
    Unchanged,
    /// The same file again, over a stored row that was damaged.
    Repaired,
}

/// A stored license row.
#[derive(Debug, Clone)]
pub struct StoredLicense {
    pub license_id: String,
    pub serial: i64,
    pub customer: String,
    pub vendor_key_id: String,
    pub digest: String,
    pub sealed: Vec<u8>,
    pub applied_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct IdentityRow {
    pub id: String,
    pub name: String,
    /// The secret, sealed for (identities, sealed, id).
    pub sealed: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One logged revocation of an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub revision: i64,
    pub identity_id: String,
    pub revoked_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// SHA-256 of the token secret, hex.
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One instance as recorded in the database.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceRow {
    pub id: String,
    pub address: String,
    pub admin_address: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub drain_requested: bool,
    /// Seconds since last_seen, by the database clock.
    pub silent_for_s: f64,
    /// Live leases this instance granted.
    pub leases: i64,
    /// The master keys it holds, `id:fingerprint,…` (see `Keyring::fingerprints`).
    pub key_ids: String,
    /// Its `lease_ttl`, milliseconds: the longest promise it gives.
    pub lease_ttl_ms: i64,
}

/// What an instance records about itself on every cluster heartbeat.
#[derive(Debug, Clone)]
pub struct InstanceBeat<'a> {
    pub id: &'a str,
    pub address: &'a str,
    pub admin_address: &'a str,
    pub version: &'a str,
    /// `id:fingerprint,…` of the master keys it holds.
    pub key_ids: &'a str,
    pub lease_ttl_ms: i64,
    /// First beat after start: clears an old drain request.
    pub fresh: bool,
}

impl InstanceRow {
    /// Whether this instance holds the key `id:fingerprint`.
    pub fn holds_key(&self, fingerprint: &str) -> bool {
        self.key_ids.split(',').any(|k| k == fingerprint)
    }
}

/// One sealed blob with where it lives (for key rotation): its column
/// (never [`SealedColumn::Canary`]: canaries are read on their own) and row.
#[derive(Debug, Clone)]
pub struct SealedRow {
    pub column: SealedColumn,
    pub row_id: String,
    pub sealed: Vec<u8>,
}

impl SealedRow {
    /// What the blob is bound to: open and re-seal it with this.
    pub fn at(&self) -> SealContext<'_> {
        self.column.at(&self.row_id)
    }
}

/// The compare-and-set UPDATE that re-seals one row of `column` (binds: new
/// blob, row id as text, old blob), for both backends: `integer` is the
/// dialect's integer type the text id of a ticket key is cast to.
pub(crate) fn reseal_sql(column: SealedColumn, integer: &str) -> String {
    let id = match column {
        SealedColumn::TicketKey => format!("CAST(? AS {integer})"),
        _ => "?".to_string(),
    };
    format!(
        "UPDATE {} SET {} = ? WHERE {} = {id} AND {} = ?",
        column.table(),
        column.column(),
        column.row_column(),
        column.column()
    )
}

/// One holder's leases in a batched renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewItem {
    pub holder: String,
    pub leases: Vec<LeaseRef>,
}

/// What an extension did to one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// Held at least `hold` past this database time, cap raised.
    Extended(DateTime<Utc>),
    /// The row no longer holds the lease (released, expired, re-granted).
    Lost,
    /// Another transaction holds the row's lock right now (a stalled
    /// instance, a release in progress): not waited for, not extended.
    Busy,
}

/// A time column as a backend stores it: MySQL's DATETIME(6) (read as
/// `NaiveDateTime`, the session runs in UTC) and SQLite's INTEGER
/// microseconds since the epoch. The one place either becomes a UTC time.
pub(crate) trait DbTime {
    fn utc(self) -> DateTime<Utc>;
}

impl DbTime for NaiveDateTime {
    fn utc(self) -> DateTime<Utc> {
        self.and_utc()
    }
}

impl DbTime for i64 {
    fn utc(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self).unwrap_or_default()
    }
}

// Rows as both backends select them, read by column name (each SELECT
// names its columns, with `AS` where an expression or a join needs it),
// generic over how the backend stores a time.

/// `identities`: id, name, sealed, created_at, expires_at, revoked_at.
#[derive(sqlx::FromRow)]
pub(crate) struct IdentityRecord<T> {
    id: String,
    name: String,
    sealed: Vec<u8>,
    created_at: T,
    expires_at: Option<T>,
    revoked_at: Option<T>,
}

impl<T: DbTime> From<IdentityRecord<T>> for IdentityRow {
    fn from(r: IdentityRecord<T>) -> Self {
        IdentityRow {
            id: r.id,
            name: r.name,
            sealed: r.sealed,
            created_at: r.created_at.utc(),
            expires_at: r.expires_at.map(DbTime::utc),
            revoked_at: r.revoked_at.map(DbTime::utc),
        }
    }
}

/// `identity_revocations`: revision, identity_id, revoked_at.
#[derive(sqlx::FromRow)]
pub(crate) struct RevocationRecord<T> {
    revision: i64,
    identity_id: String,
    revoked_at: T,
}

impl<T: DbTime> From<RevocationRecord<T>> for Revocation {
    fn from(r: RevocationRecord<T>) -> Self {
        Revocation {
            revision: r.revision,
            identity_id: r.identity_id,
            revoked_at: r.revoked_at.utc(),
        }
    }
}

/// `admin_tokens`: id, name, role, token_hash, created_at, revoked_at.
#[derive(sqlx::FromRow)]
pub(crate) struct TokenRecord<T> {
    id: String,
    name: String,
    role: String,
    token_hash: String,
    created_at: T,
    revoked_at: Option<T>,
}

impl<T: DbTime> TokenRecord<T> {
    /// The token; a role no version of floatlm writes is a damaged row.
    pub(crate) fn into_row(self) -> Result<TokenRow, StorageError> {
        Ok(TokenRow {
            id: self.id,
            name: self.name,
            role: self.role.parse().map_err(StorageError::Corrupt)?,
            token_hash: self.token_hash,
            created_at: self.created_at.utc(),
            revoked_at: self.revoked_at.map(DbTime::utc),
        })
    }
}

/// `licenses`: license_id, serial, customer, vendor_key_id, digest, sealed,
/// applied_at.
#[derive(sqlx::FromRow)]
pub(crate) struct LicenseRow<T> {
    license_id: String,
    serial: i64,
    customer: String,
    vendor_key_id: String,
    digest: String,
    sealed: Vec<u8>,
    applied_at: T,
}

impl<T: DbTime> From<LicenseRow<T>> for StoredLicense {
    fn from(r: LicenseRow<T>) -> Self {
        StoredLicense {
            license_id: r.license_id,
            serial: r.serial,
            customer: r.customer,
            vendor_key_id: r.vendor_key_id,
            digest: r.digest,
            sealed: r.sealed,
            applied_at: r.applied_at.utc(),
        }
    }
}

/// A feature with its slot counts: id, license_id, name, seats, version,
/// not_before, expires_at, valid (0/1, by the database clock),
/// active_slots, active_free, retiring_live, used.
#[derive(sqlx::FromRow)]
pub(crate) struct FeatureRecord<T> {
    id: i64,
    license_id: String,
    name: String,
    seats: i64,
    version: Option<String>,
    not_before: Option<T>,
    expires_at: Option<T>,
    valid: i64,
    active_slots: i64,
    active_free: i64,
    retiring_live: i64,
    used: i64,
}

impl<T: DbTime> From<FeatureRecord<T>> for FeatureRow {
    fn from(r: FeatureRecord<T>) -> Self {
        FeatureRow {
            id: r.id,
            license_id: r.license_id,
            name: r.name,
            seats: r.seats,
            version: r.version,
            not_before: r.not_before.map(DbTime::utc),
            expires_at: r.expires_at.map(DbTime::utc),
            valid: r.valid == 1,
            active_slots: r.active_slots,
            active_free: r.active_free,
            retiring_live: r.retiring_live,
            used: r.used,
        }
    }
}

/// An instance of the cluster view: id, address, admin_address, version,
/// started_at, last_seen, drain_requested (0/1), silent_for_s, leases,
/// key_ids, lease_ttl_ms.
#[derive(sqlx::FromRow)]
pub(crate) struct InstanceRecord<T> {
    id: String,
    address: String,
    admin_address: String,
    version: String,
    started_at: T,
    last_seen: T,
    drain_requested: i64,
    silent_for_s: f64,
    leases: i64,
    key_ids: String,
    lease_ttl_ms: i64,
}

impl<T: DbTime> From<InstanceRecord<T>> for InstanceRow {
    fn from(r: InstanceRecord<T>) -> Self {
        InstanceRow {
            id: r.id,
            address: r.address,
            admin_address: r.admin_address,
            version: r.version,
            started_at: r.started_at.utc(),
            last_seen: r.last_seen.utc(),
            drain_requested: r.drain_requested == 1,
            silent_for_s: r.silent_for_s,
            leases: r.leases,
            key_ids: r.key_ids,
            lease_ttl_ms: r.lease_ttl_ms,
        }
    }
}

/// A live lease for operators: feature_id, slot_no, lease_gen, nonce,
/// feature, license_id, holder, client_info, granted_by, granted_at,
/// expires_at, state.
#[derive(sqlx::FromRow)]
pub(crate) struct LeaseRecord<T> {
    feature_id: i64,
    slot_no: i64,
    lease_gen: i64,
    nonce: i64,
    feature: String,
    license_id: String,
    holder: Option<String>,
    client_info: Option<String>,
    granted_by: Option<String>,
    granted_at: Option<T>,
    expires_at: T,
    state: i64,
}

impl<T: DbTime> From<LeaseRecord<T>> for LeaseInfo {
    fn from(r: LeaseRecord<T>) -> Self {
        LeaseInfo {
            lease: LeaseRef {
                feature_id: r.feature_id,
                slot_no: r.slot_no,
                lease_gen: r.lease_gen,
                nonce: r.nonce,
            },
            feature: r.feature,
            license_id: r.license_id,
            // A seat held by nobody: force-released or quarantined.
            revoked: r.holder.is_none(),
            holder: r.holder.unwrap_or_default(),
            client_info: r.client_info.unwrap_or_default(),
            granted_by: r.granted_by.unwrap_or_default(),
            granted_at: r.granted_at.map(DbTime::utc),
            expires_at: r.expires_at.utc(),
            retiring: r.state == SlotState::Retiring.stored(),
        }
    }
}

/// A slot row as a heartbeat's check reads it, with its feature's window:
/// feature_id, slot_no, lease_gen, nonce, holder, state, expires_at,
/// promise_ms, feature, not_before, window_end.
#[derive(sqlx::FromRow)]
pub(crate) struct SlotRecord<T> {
    feature_id: i64,
    slot_no: i64,
    lease_gen: i64,
    nonce: i64,
    holder: Option<String>,
    state: i64,
    expires_at: Option<T>,
    promise_ms: i64,
    feature: String,
    not_before: Option<T>,
    window_end: Option<T>,
}

impl<T: DbTime> SlotRecord<T> {
    /// The row's key (feature_id, slot_no) and what a check judges.
    pub(crate) fn into_read(self) -> ((i64, i64), SlotRead) {
        (
            (self.feature_id, self.slot_no),
            SlotRead {
                lease_gen: self.lease_gen,
                nonce: self.nonce,
                holder: self.holder,
                state: self.state,
                expires_at: self.expires_at.map(DbTime::utc),
                promise_ms: self.promise_ms,
                feature: self.feature,
                not_before: self.not_before.map(DbTime::utc),
                window_end: self.window_end.map(DbTime::utc),
            },
        )
    }
}

/// `usage_events`, all columns (a denial has no lease).
#[derive(sqlx::FromRow)]
pub(crate) struct UsageEventRecord<T> {
    id: i64,
    at: T,
    event: String,
    feature: String,
    feature_id: Option<i64>,
    slot_no: Option<i64>,
    lease_gen: Option<i64>,
    lease_nonce: Option<i64>,
    identity: Option<String>,
    user: Option<String>,
    host: Option<String>,
    address: Option<String>,
    instance: Option<String>,
    reason: Option<String>,
}

impl<T: DbTime> From<UsageEventRecord<T>> for crate::domain::usage::UsageEvent {
    fn from(r: UsageEventRecord<T>) -> Self {
        let lease = match (r.feature_id, r.slot_no, r.lease_gen, r.lease_nonce) {
            (Some(f), Some(s), Some(g), Some(n)) => Some((f, s, g, n)),
            _ => None,
        };
        Self {
            id: r.id,
            at: r.at.utc(),
            event: r.event,
            feature: r.feature,
            lease,
            identity: r.identity,
            user: r.user,
            host: r.host,
            address: r.address,
            instance: r.instance,
            reason: r.reason,
        }
    }
}

/// `backup_claims`, all columns.
#[derive(sqlx::FromRow)]
pub(crate) struct ClaimRecord<T> {
    slot: i64,
    instance_id: String,
    claimed_at: T,
    finished_at: Option<T>,
    outcome: Option<String>,
    file: Option<String>,
    bytes: Option<i64>,
    digest: Option<String>,
    error: Option<String>,
}

impl<T: DbTime> From<ClaimRecord<T>> for super::backup::BackupClaim {
    fn from(r: ClaimRecord<T>) -> Self {
        Self {
            slot: r.slot,
            instance_id: r.instance_id,
            claimed_at: r.claimed_at.utc(),
            finished_at: r.finished_at.map(DbTime::utc),
            outcome: r.outcome,
            file: r.file,
            bytes: r.bytes,
            digest: r.digest,
            error: r.error,
        }
    }
}
