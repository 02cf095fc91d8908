//! The rows storage answers in and is given, shared by both backends:
//! licenses, identities, tokens, instances, sealed blobs, batched renewals.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::license::FeatureDef;
use crate::domain::seats::{LeaseRef, Role};

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

/// Which sealed column a blob lives in (for key rotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedKind {
    License,
    IdentitySecret,
    TicketKey,
}

impl SealedKind {
    pub fn table(&self) -> &'static str {
        match self {
            SealedKind::License => "licenses",
            SealedKind::IdentitySecret => "identities",
            SealedKind::TicketKey => "ticket_keys",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SealedRow {
    pub kind: SealedKind,
    pub row_id: String,
    pub sealed: Vec<u8>,
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
