//! What a backup holds, as the storage sees it: the restorable tables and
//! their columns (one list, [`TABLES`], read by both backends), the typed
//! cells rows are read into and written from, and the [`BackupStore`] role
//! trait (snapshot, restore, the claim table of scheduled backups). The SQL
//! is in `backup_mysql.rs` and `backup_sqlite.rs`; the file format, the
//! encryption and the schedule are in `crate::backup` and `crate::app`.
//!
//! Adding a table to backups (usage records, say): one more [`Table`] in
//! [`TABLES`]. A backup made before it simply lacks the table (restored
//! empty); a column added later is declared `nullable` or gets a default in
//! its migration, so an older backup without it still restores.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

use super::Result;

/// How a column's values are kept in a backup file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Int,
    Text,
    Bytes,
    /// A database time (DATETIME(6) on MySQL, microseconds on SQLite).
    Time,
}

#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColType,
    pub nullable: bool,
}

/// A restorable table: its name and the columns a backup holds (for
/// `slots`, only the slot layout: leases are not restorable state).
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    /// Columns to order rows by (a backup of the same state is the same file
    /// body, so its digest says whether two backups hold the same state).
    pub order_by: &'static str,
}

const fn col(name: &'static str, ty: ColType) -> Column {
    Column {
        name,
        ty,
        nullable: false,
    }
}

const fn opt(name: &'static str, ty: ColType) -> Column {
    Column {
        name,
        ty,
        nullable: true,
    }
}

use ColType::{Bytes, Int, Text, Time};

/// Every table a backup holds, in the order a restore inserts them.
/// Sealed columns (`sealed`) are copied as they are: they stay bound to
/// their table, column and row.
pub const TABLES: &[Table] = &[
    Table {
        name: "keyring_canary",
        columns: &[
            col("key_id", Text),
            col("sealed", Bytes),
            col("created_at", Time),
        ],
        order_by: "key_id",
    },
    Table {
        name: "licenses",
        columns: &[
            col("license_id", Text),
            col("serial", Int),
            col("customer", Text),
            col("vendor_key_id", Text),
            col("digest", Text),
            col("sealed", Bytes),
            col("applied_at", Time),
        ],
        order_by: "license_id",
    },
    Table {
        name: "features",
        columns: &[
            col("id", Int),
            col("license_id", Text),
            col("name", Text),
            col("seats", Int),
            opt("version", Text),
            opt("not_before", Time),
            opt("expires_at", Time),
        ],
        order_by: "id",
    },
    Table {
        name: "slots",
        columns: &[
            col("feature_id", Int),
            col("slot_no", Int),
            col("state", Int),
            col("lease_gen", Int),
        ],
        order_by: "feature_id, slot_no",
    },
    Table {
        name: "identities",
        columns: &[
            col("id", Text),
            col("name", Text),
            col("sealed", Bytes),
            col("created_at", Time),
            opt("expires_at", Time),
            opt("revoked_at", Time),
        ],
        order_by: "id",
    },
    Table {
        name: "admin_tokens",
        columns: &[
            col("id", Text),
            col("name", Text),
            col("role", Text),
            col("token_hash", Text),
            col("created_at", Time),
            opt("revoked_at", Time),
        ],
        order_by: "id",
    },
    Table {
        name: "ticket_keys",
        columns: &[col("id", Int), col("sealed", Bytes)],
        order_by: "id",
    },
    Table {
        name: "identity_features",
        columns: &[
            col("identity_id", Text),
            col("feature", Text),
            col("assigned_at", Time),
        ],
        order_by: "identity_id, feature",
    },
    Table {
        name: "usage_events",
        columns: &[
            col("id", Int),
            col("at", Time),
            col("event", Text),
            col("feature", Text),
            opt("feature_id", Int),
            opt("slot_no", Int),
            opt("lease_gen", Int),
            opt("lease_nonce", Int),
            opt("identity", Text),
            opt("user", Text),
            opt("host", Text),
            opt("address", Text),
            opt("instance", Text),
            opt("reason", Text),
        ],
        order_by: "id",
    },
];

/// After a restore: every lease the restored usage records show granted
/// and not ended is lost (leases are not restorable), so it ends here as a
/// force release with reason `restore`, at the restore's database time.
/// `{now}` is the backend's clock expression.
pub const END_RESTORED_LEASES: &str =
    "INSERT INTO usage_events (at, event, feature, feature_id, slot_no, lease_gen, lease_nonce,
                               identity, user, host, address, instance, reason)
     SELECT {now}, 'force_release', g.feature, g.feature_id, g.slot_no, g.lease_gen, g.lease_nonce,
            g.identity, g.user, g.host, g.address, g.instance, 'restore'
     FROM usage_events g
     WHERE g.event = 'grant' AND NOT EXISTS (
         SELECT 1 FROM usage_events e
         WHERE e.feature_id = g.feature_id AND e.slot_no = g.slot_no AND e.lease_gen = g.lease_gen
           AND e.lease_nonce = g.lease_nonce AND e.event <> 'grant')";

/// The declaration of table `name`, if backups hold it.
pub fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.name == name)
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
    Time(DateTime<Utc>),
}

/// The rows of one table, each with one cell per column of its declaration.
#[derive(Debug, Clone)]
pub struct TableRows {
    pub table: &'static Table,
    pub rows: Vec<Vec<Cell>>,
}

/// Every restorable row, read in one consistent snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The database clock when it was read.
    pub taken_at: DateTime<Utc>,
    /// The longest `lease_ttl` any recorded instance gives, milliseconds: a
    /// restore holds every seat at least this long.
    pub longest_lease_ttl_ms: i64,
    pub tables: Vec<TableRows>,
}

/// How a scheduled backup ended.
#[derive(Debug, Clone)]
pub struct BackupDone {
    pub ok: bool,
    pub file: Option<String>,
    pub bytes: Option<i64>,
    pub digest: Option<String>,
    pub error: Option<String>,
}

/// One row of the claim table.
#[derive(Debug, Clone, Serialize)]
pub struct BackupClaim {
    pub slot: i64,
    pub instance_id: String,
    pub claimed_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `ok`, `failed`, or None while it runs (or its instance died).
    pub outcome: Option<String>,
    pub file: Option<String>,
    pub bytes: Option<i64>,
    pub digest: Option<String>,
    pub error: Option<String>,
}

/// Backups and restores, as the storage does them.
#[async_trait]
pub trait BackupStore: Send + Sync {
    /// Every row of [`TABLES`] (for `slots`, the slot layout only), read in
    /// one read-only transaction with the database clock of that read.
    async fn snapshot(&self) -> Result<Snapshot>;

    /// Rows in each table of [`TABLES`] (0 for a table that does not exist
    /// yet: a database never migrated); decides whether a database is empty.
    async fn restorable_rows(&self) -> Result<Vec<(&'static str, i64)>>;

    /// In one transaction: deletes every row of [`TABLES`] and every lease
    /// and request id, inserts `tables`, holds every active or retiring
    /// slot by nobody until `hold` past the database clock (the promises
    /// given before the restore must run out before a seat is granted
    /// again) and bumps the identity revision (instances drop cached
    /// identities). Returns when the hold ends (database clock).
    async fn restore(&self, tables: &[TableRows], hold: Duration) -> Result<DateTime<Utc>>;

    /// Claims scheduled backup `slot` for `instance`: true when this call
    /// inserted the claim, or took over an unfinished one made at least
    /// `down_after` ago by an instance not seen for `down_after` (a claim
    /// younger than that is never judged by the instance table: its
    /// instance may not have recorded itself yet), an unfinished one made
    /// `stale_after` ago or earlier, or one whose backup failed
    /// `stale_after` ago or earlier.
    async fn claim_backup(
        &self,
        slot: i64,
        instance: &str,
        down_after: Duration,
        stale_after: Duration,
    ) -> Result<bool>;

    /// Records how the backup of `slot` claimed by `instance` ended.
    async fn finish_backup(&self, slot: i64, instance: &str, done: &BackupDone) -> Result<()>;

    /// The newest `limit` claims, newest first.
    async fn backup_claims(&self, limit: i64) -> Result<Vec<BackupClaim>>;

    /// Forgets claims of slots below `below`; returns how many.
    async fn prune_backup_claims(&self, below: i64) -> Result<u64>;
}

/// The newest schema (migration number) this floatlm knows; both backends
/// number their migrations alike (the smaller newest, should they not).
pub fn known_schema() -> i64 {
    let newest = |m: sqlx::migrate::Migrator| m.iter().map(|m| m.version).max().unwrap_or(0);
    newest(sqlx::migrate!("./migrations/sqlite")).min(newest(sqlx::migrate!("./migrations/mysql")))
}

/// `SELECT` list of `t` (static names only), with `int` wrapping integer
/// columns (MySQL: `CAST(c AS SIGNED)` so every integer reads as i64).
pub(crate) fn select_sql(t: &Table, int: impl Fn(&str) -> String) -> String {
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| match c.ty {
            ColType::Int => int(c.name),
            _ => c.name.to_string(),
        })
        .collect();
    format!(
        "SELECT {} FROM {} ORDER BY {}",
        cols.join(", "),
        t.name,
        t.order_by
    )
}

/// `INSERT INTO t (c1, …) ` of `t` (static names only).
pub(crate) fn insert_sql(t: &Table) -> String {
    let cols: Vec<&str> = t.columns.iter().map(|c| c.name).collect();
    format!("INSERT INTO {} ({}) ", t.name, cols.join(", "))
}

/// Rows per INSERT statement of a restore.
pub(crate) const INSERT_CHUNK: usize = 200;
