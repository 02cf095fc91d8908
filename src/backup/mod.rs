//! Backup files: the format, its encryption and its manifest (this file),
//! file names, atomic writes and retention (`files.rs`). Taking backups on
//! a schedule is the App's (`app/backup.rs`); reading and writing the rows
//! is the storage's ([`crate::storage::backup`]).
//!
//! A backup file (format version 1):
//!
//! ```text
//! "FLMBACKP" | version:u16 BE | header_len:u32 BE | header (JSON) | ciphertext || tag:16
//! ```
//!
//! The header names the master key (id and fingerprint), the HKDF salt, the
//! AES-GCM nonce and the ciphertext length; it is not secret, but it is the
//! AAD, so changing any byte of it fails authentication. The file key is
//! HKDF-SHA256(salt, master key, "floatlm backup v1"), a fresh salt and
//! nonce per file, so a file made before a key rotation opens while its key
//! is still configured. The plaintext is
//!
//! ```text
//! manifest_len:u32 BE | manifest (JSON) | body (JSON: {"tables": [...]})
//! ```
//!
//! and the manifest's `digest` is the SHA-256 of the body bytes. Each table
//! lists its column names and rows (numbers, strings, base64 for bytes,
//! microseconds since the epoch for times, null): a reader maps columns by
//! name, so tables and nullable columns are added without a format version
//! change. Sealed columns stay sealed as they were in the database.

pub mod files;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::crypto::keyring::{KeyLoadError, Keyring, SealedColumn};
use crate::storage::backup::{self as tables, Cell, ColType, Snapshot, TableRows};

pub const MAGIC: &[u8; 8] = b"FLMBACKP";
pub const FORMAT_VERSION: u16 = 1;
const HKDF_INFO: &[u8] = b"floatlm backup v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// A header longer than this is not one of ours.
const MAX_HEADER: u32 = 64 * 1024;

/// Why a backup file was refused; each says what to do. Nothing is changed
/// by a refused file.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("not a floatlm backup file (it does not start with the floatlm backup signature)")]
    NotABackup,
    #[error("the file is backup format version {0}, written by a newer floatlm; this floatlm ({v}) reads format version {FORMAT_VERSION}: use a newer floatlm", v = env!("CARGO_PKG_VERSION"))]
    FutureVersion(u16),
    #[error("the file is truncated: it has {have} bytes, its header says {want}")]
    Truncated { have: u64, want: u64 },
    #[error("the file is damaged: {0}")]
    Malformed(String),
    #[error("the file is encrypted under master key '{0}', which is not configured: add that key (master_key or master_key_file, ID:BASE64 per key, the last one seals) to open it")]
    UnknownKey(String),
    #[error("the configured master key '{0}' is not the key this file was made with (same id, different key): configure the key the cluster held when the backup was made")]
    WrongKey(String),
    #[error("the file does not authenticate: it was changed or damaged after it was written (AES-256-GCM tag mismatch); use another backup")]
    Tampered,
    #[error("the backup holds schema version {file}, written by a newer floatlm; this floatlm ({v}) knows schema version {known}: restore it with a newer floatlm", v = env!("CARGO_PKG_VERSION"))]
    FutureSchema { file: i64, known: i64 },
    #[error("the backup's sealed {table} row {row} does not open with the configured keys: {why}")]
    Sealed {
        table: String,
        row: String,
        why: String,
    },
}

fn malformed(what: impl Into<String>) -> BackupError {
    BackupError::Malformed(what.into())
}

/// The clear-text header (authenticated as AAD).
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    key_id: String,
    /// `Keyring::fingerprints` of that key: tells a wrong key from tampering.
    key_fingerprint: String,
    /// Hex.
    salt: String,
    /// Hex.
    nonce: String,
    ciphertext_len: u64,
}

/// What a backup holds and where it came from (inside the encryption).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format_version: u16,
    /// The database clock when the rows were read.
    pub created_at: DateTime<Utc>,
    /// The instance that took it.
    pub instance: String,
    pub floatlm_version: String,
    /// `mysql` or `sqlite`: where it was taken (it restores into either).
    pub backend: String,
    /// The schema (migration number) its tables follow.
    pub schema_version: i64,
    /// The master key the file is encrypted under.
    pub key_id: String,
    /// The longest `lease_ttl` any instance recorded (ms): a restore holds
    /// every seat at least this long.
    pub longest_lease_ttl_ms: i64,
    /// Rows per table.
    pub counts: BTreeMap<String, u64>,
    /// SHA-256 (hex) of the body.
    pub digest: String,
}

/// A backup file made from a snapshot.
#[derive(Debug, Clone)]
pub struct Built {
    pub bytes: Vec<u8>,
    pub manifest: Manifest,
}

/// A backup file opened and checked.
#[derive(Debug, Clone)]
pub struct Opened {
    pub manifest: Manifest,
    pub tables: Vec<TableRows>,
}

/// The `id:fingerprint` entry of `key_id` in `ring`.
fn fingerprint(ring: &Keyring, key_id: &str) -> Option<String> {
    ring.fingerprints()
        .split(',')
        .find(|f| f.split(':').next() == Some(key_id))
        .map(str::to_string)
}

fn file_key(ring: &Keyring, key_id: &str, salt: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let master = ring.key(key_id)?;
    let mut out = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), master.bytes())
        .expand(HKDF_INFO, out.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 length");
    Some(out)
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn cell_json(c: &Cell) -> Value {
    match c {
        Cell::Null => Value::Null,
        Cell::Int(i) => Value::from(*i),
        Cell::Text(s) => Value::from(s.as_str()),
        Cell::Bytes(b) => Value::from(b64().encode(b)),
        Cell::Time(t) => Value::from(t.timestamp_micros()),
    }
}

fn json_cell(v: &Value, ty: ColType, nullable: bool) -> Result<Cell, String> {
    if v.is_null() {
        return if nullable {
            Ok(Cell::Null)
        } else {
            Err("null in a column that may not be null".into())
        };
    }
    match ty {
        ColType::Int => v.as_i64().map(Cell::Int).ok_or("not an integer".into()),
        ColType::Text => v
            .as_str()
            .map(|s| Cell::Text(s.to_string()))
            .ok_or("not text".into()),
        ColType::Bytes => v
            .as_str()
            .and_then(|s| b64().decode(s).ok())
            .map(Cell::Bytes)
            .ok_or("not base64".into()),
        ColType::Time => v
            .as_i64()
            .and_then(DateTime::from_timestamp_micros)
            .map(Cell::Time)
            .ok_or("not a time in microseconds".into()),
    }
}

#[derive(Serialize, Deserialize)]
struct BodyTable {
    name: String,
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

#[derive(Serialize, Deserialize)]
struct Body {
    tables: Vec<BodyTable>,
}

/// Encrypts `snap` into a backup file under the keyring's sealing key.
/// CPU work (JSON, AES-GCM): call it off the async runtime.
pub fn build(
    snap: &Snapshot,
    ring: &Keyring,
    instance: &str,
    backend: &str,
    schema_version: i64,
) -> Built {
    let body = Body {
        tables: snap
            .tables
            .iter()
            .map(|t| BodyTable {
                name: t.table.name.to_string(),
                columns: t.table.columns.iter().map(|c| c.name.to_string()).collect(),
                rows: t
                    .rows
                    .iter()
                    .map(|r| r.iter().map(cell_json).collect())
                    .collect(),
            })
            .collect(),
    };
    let body = serde_json::to_vec(&body).expect("JSON of plain values");
    let key = ring.sealing_key();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        created_at: snap.taken_at,
        instance: instance.to_string(),
        floatlm_version: env!("CARGO_PKG_VERSION").to_string(),
        backend: backend.to_string(),
        schema_version,
        key_id: key.id().to_string(),
        longest_lease_ttl_ms: snap.longest_lease_ttl_ms,
        counts: snap
            .tables
            .iter()
            .map(|t| (t.table.name.to_string(), t.rows.len() as u64))
            .collect(),
        digest: crate::crypto::sha256_hex(&body),
    };
    seal(&manifest, &body, ring)
}

/// Encrypts a manifest and body (public for tests that write files a
/// future floatlm would).
pub fn seal(manifest: &Manifest, body: &[u8], ring: &Keyring) -> Built {
    let key = ring.sealing_key();
    let manifest_json = serde_json::to_vec(manifest).expect("JSON of plain values");
    let mut plain = Zeroizing::new(Vec::with_capacity(4 + manifest_json.len() + body.len()));
    plain.extend_from_slice(&(manifest_json.len() as u32).to_be_bytes());
    plain.extend_from_slice(&manifest_json);
    plain.extend_from_slice(body);
    let salt = crate::crypto::random_bytes(32);
    let nonce = crate::crypto::random_bytes(NONCE_LEN);
    let header = Header {
        key_id: key.id().to_string(),
        key_fingerprint: fingerprint(ring, key.id()).unwrap_or_default(),
        salt: hex::encode(&salt),
        nonce: hex::encode(&nonce),
        ciphertext_len: (plain.len() + TAG_LEN) as u64,
    };
    let header = serde_json::to_vec(&header).expect("JSON of plain values");
    let mut out = Vec::with_capacity(14 + header.len() + plain.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    let fkey = file_key(ring, key.id(), &salt).expect("the sealing key is in the ring");
    let ct = Aes256Gcm::new_from_slice(fkey.as_ref())
        .expect("32-byte key")
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &out,
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    out.extend_from_slice(&ct);
    Built {
        bytes: out,
        manifest: manifest.clone(),
    }
}

/// Opens and checks a backup file: signature, format version, key,
/// authentication, digest, counts, schema, and every table and column
/// known. Changes nothing. CPU work: call it off the async runtime.
pub fn open(bytes: &[u8], ring: &Keyring, known_schema: i64) -> Result<Opened, BackupError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let rest = &bytes[MAGIC.len()..];
    if rest.len() < 6 {
        return Err(BackupError::Truncated {
            have: bytes.len() as u64,
            want: 14,
        });
    }
    let version = u16::from_be_bytes([rest[0], rest[1]]);
    if version > FORMAT_VERSION {
        return Err(BackupError::FutureVersion(version));
    }
    if version != FORMAT_VERSION {
        return Err(malformed(format!("unknown format version {version}")));
    }
    let header_len = u32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]);
    if header_len > MAX_HEADER {
        return Err(malformed("its header is implausibly long"));
    }
    let header_end = 14 + header_len as usize;
    if bytes.len() < header_end {
        return Err(BackupError::Truncated {
            have: bytes.len() as u64,
            want: header_end as u64,
        });
    }
    let header: Header = serde_json::from_slice(&bytes[14..header_end])
        .map_err(|e| malformed(format!("its header is not readable ({e})")))?;
    let want = (header_end as u64).saturating_add(header.ciphertext_len);
    if (bytes.len() as u64) < want {
        return Err(BackupError::Truncated {
            have: bytes.len() as u64,
            want,
        });
    }
    if (bytes.len() as u64) > want {
        return Err(malformed(format!(
            "it has {} bytes after its end",
            bytes.len() as u64 - want
        )));
    }
    let (salt, nonce) = match (hex::decode(&header.salt), hex::decode(&header.nonce)) {
        (Ok(s), Ok(n)) if n.len() == NONCE_LEN && !s.is_empty() => (s, n),
        _ => return Err(malformed("its header's salt or nonce is invalid")),
    };
    let Some(fkey) = file_key(ring, &header.key_id, &salt) else {
        return Err(BackupError::UnknownKey(header.key_id));
    };
    if fingerprint(ring, &header.key_id).as_deref() != Some(header.key_fingerprint.as_str()) {
        return Err(BackupError::WrongKey(header.key_id));
    }
    let plain = Zeroizing::new(
        Aes256Gcm::new_from_slice(fkey.as_ref())
            .expect("32-byte key")
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &bytes[header_end..],
                    aad: &bytes[..header_end],
                },
            )
            .map_err(|_| BackupError::Tampered)?,
    );
    // Authenticated from here on: what follows was written by a floatlm
    // holding the key, so a failure is a bug or a future layout.
    if plain.len() < 4 {
        return Err(malformed("its content is empty"));
    }
    let mlen = u32::from_be_bytes([plain[0], plain[1], plain[2], plain[3]]) as usize;
    if plain.len() < 4 + mlen {
        return Err(malformed("its manifest is cut short"));
    }
    let manifest: Manifest = serde_json::from_slice(&plain[4..4 + mlen])
        .map_err(|e| malformed(format!("its manifest is not readable ({e})")))?;
    if manifest.schema_version > known_schema {
        return Err(BackupError::FutureSchema {
            file: manifest.schema_version,
            known: known_schema,
        });
    }
    let body_bytes = &plain[4 + mlen..];
    if crate::crypto::sha256_hex(body_bytes) != manifest.digest {
        return Err(malformed(
            "its content does not match the manifest's digest",
        ));
    }
    let body: Body = serde_json::from_slice(body_bytes)
        .map_err(|e| malformed(format!("its tables are not readable ({e})")))?;
    let mut out = Vec::with_capacity(body.tables.len());
    for bt in body.tables {
        let Some(table) = tables::table(&bt.name) else {
            return Err(malformed(format!(
                "it holds table '{}', which this floatlm does not know",
                bt.name
            )));
        };
        if manifest.counts.get(&bt.name) != Some(&(bt.rows.len() as u64)) {
            return Err(malformed(format!(
                "table {} has {} rows, its manifest says {:?}",
                bt.name,
                bt.rows.len(),
                manifest.counts.get(&bt.name)
            )));
        }
        if let Some(c) = bt
            .columns
            .iter()
            .find(|c| !table.columns.iter().any(|d| d.name == c.as_str()))
        {
            return Err(malformed(format!(
                "table {} has column '{c}', which this floatlm does not know",
                bt.name
            )));
        }
        // Where each declared column is in the file's rows (None: absent,
        // a column added after the file was written).
        let at: Vec<Option<usize>> = table
            .columns
            .iter()
            .map(|d| bt.columns.iter().position(|c| c == d.name))
            .collect();
        let mut rows = Vec::with_capacity(bt.rows.len());
        for (n, r) in bt.rows.iter().enumerate() {
            if r.len() != bt.columns.len() {
                return Err(malformed(format!("table {} row {n} is cut short", bt.name)));
            }
            let mut cells = Vec::with_capacity(table.columns.len());
            for (d, pos) in table.columns.iter().zip(&at) {
                let v = pos.map_or(&Value::Null, |p| &r[p]);
                cells.push(json_cell(v, d.ty, d.nullable).map_err(|why| {
                    malformed(format!(
                        "table {} row {n} column {}: {why}",
                        bt.name, d.name
                    ))
                })?);
            }
            rows.push(cells);
        }
        out.push(TableRows { table, rows });
    }
    // Restored in the order of TABLES, whatever order the file lists.
    out.sort_by_key(|t| tables::TABLES.iter().position(|d| d.name == t.table.name));
    Ok(Opened {
        manifest,
        tables: out,
    })
}

/// Opens every sealed column of an opened backup with `ring` (bound to its
/// table, column and row, as in the database); how many opened.
pub fn check_sealed(opened: &Opened, ring: &Keyring) -> Result<usize, BackupError> {
    let mut n = 0;
    for t in &opened.tables {
        let Some(column) = SealedColumn::of_table(t.table.name) else {
            continue;
        };
        let at = |name: &str| t.table.columns.iter().position(|c| c.name == name);
        let (Some(sealed), Some(row)) = (at(column.column()), at(column.row_column())) else {
            continue;
        };
        for r in &t.rows {
            let row_id = match &r[row] {
                Cell::Text(s) => s.clone(),
                Cell::Int(i) => i.to_string(),
                other => format!("{other:?}"),
            };
            let Cell::Bytes(blob) = &r[sealed] else {
                continue;
            };
            ring.open(column.at(&row_id), blob)
                .map_err(|e| BackupError::Sealed {
                    table: t.table.name.to_string(),
                    row: row_id.clone(),
                    why: e.to_string(),
                })?;
            n += 1;
        }
    }
    Ok(n)
}

/// The master keys a command outside a running instance uses (`backup
/// verify`, `restore`): the configured ones, or DATA_DIR/master.key (never
/// generated here).
pub fn configured_keyring(config: &Config) -> Result<Keyring, String> {
    let keys = config.load_master_keys().map_err(|e| match e {
        KeyLoadError::NoFile(path) => format!(
            "no master key: set master_key or master_key_file (FLOATLM_MASTER_KEY, --master-key-file), \
             or run where {} exists",
            path.display()
        ),
        e => e.to_string(),
    })?;
    Keyring::new(keys).map_err(|e| e.to_string())
}

/// Reports a finished backup (scheduled or on demand; `ok` or failed, at
/// the database time it ended, its size): the one place backup metrics
/// (`floatlm_backup_last_*`) are recorded.
pub fn backup_finished(metrics: &crate::metrics::Metrics, ok: bool, at: DateTime<Utc>, bytes: u64) {
    metrics.backup_finished(ok, at);
    if ok {
        tracing::info!(%at, bytes, "backup finished");
    } else {
        tracing::warn!(%at, "backup failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyring::MasterKey;
    use crate::storage::backup::TABLES;

    fn ring(id: &str, b: u8) -> Keyring {
        Keyring::new(vec![MasterKey::new(id, [b; 32]).unwrap()]).unwrap()
    }

    fn snap() -> Snapshot {
        let ts = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        Snapshot {
            taken_at: ts,
            longest_lease_ttl_ms: 5000,
            tables: vec![
                TableRows {
                    table: &TABLES[2],
                    rows: vec![vec![
                        Cell::Int(7),
                        Cell::Text("L1".into()),
                        Cell::Text("cad".into()),
                        Cell::Int(3),
                        Cell::Null,
                        Cell::Time(ts),
                        Cell::Null,
                    ]],
                },
                TableRows {
                    table: &TABLES[6],
                    rows: vec![vec![Cell::Int(1), Cell::Bytes(vec![0, 1, 255])]],
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let r = ring("k1", 1);
        let b = build(&snap(), &r, "i-1", "sqlite", 9);
        let o = open(&b.bytes, &r, 9).unwrap();
        assert_eq!(o.manifest, b.manifest);
        assert_eq!(o.tables.len(), 2);
        assert_eq!(o.tables[0].rows, snap().tables[0].rows);
        assert_eq!(o.tables[1].rows, snap().tables[1].rows);
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_refused() {
        let r = ring("k1", 1);
        let b = build(&snap(), &r, "i-1", "sqlite", 9).bytes;
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 0x01;
            assert!(open(&t, &r, 9).is_err(), "byte {i}");
        }
        for n in 0..b.len() {
            assert!(open(&b[..n], &r, 9).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn keys_versions_and_schemas_are_told_apart() {
        let r = ring("k1", 1);
        let b = build(&snap(), &r, "i-1", "sqlite", 9).bytes;
        assert_eq!(
            open(&b, &ring("k1", 2), 9).unwrap_err(),
            BackupError::WrongKey("k1".into())
        );
        assert_eq!(
            open(&b, &ring("k2", 1), 9).unwrap_err(),
            BackupError::UnknownKey("k1".into())
        );
        let both = Keyring::new(vec![
            MasterKey::new("k1", [1; 32]).unwrap(),
            MasterKey::new("k2", [2; 32]).unwrap(),
        ])
        .unwrap();
        assert!(open(&b, &both, 9).is_ok(), "an older key still opens");
        let mut v = b.clone();
        v[9] = 2;
        assert_eq!(open(&v, &r, 9).unwrap_err(), BackupError::FutureVersion(2));
        assert_eq!(
            open(&b, &r, 8).unwrap_err(),
            BackupError::FutureSchema { file: 9, known: 8 }
        );
        assert!(matches!(
            open(&b[..b.len() - 1], &r, 9).unwrap_err(),
            BackupError::Truncated { .. }
        ));
        assert_eq!(open(b"hello", &r, 9).unwrap_err(), BackupError::NotABackup);
    }

    /// `check_sealed` finds the sealed columns of a file by the crypto
    /// enum: every table a backup holds with a blob in it must be one.
    #[test]
    fn every_sealed_column_a_backup_holds_is_named_by_the_enum() {
        let mut holding_blobs: Vec<&str> = TABLES
            .iter()
            .filter(|t| t.columns.iter().any(|c| c.ty == ColType::Bytes))
            .map(|t| t.name)
            .collect();
        let mut named: Vec<&str> = SealedColumn::ALL.iter().map(|c| c.table()).collect();
        holding_blobs.sort();
        named.sort();
        assert_eq!(holding_blobs, named);
        for c in SealedColumn::ALL {
            let t = tables::table(c.table()).unwrap();
            for name in [c.column(), c.row_column()] {
                assert!(
                    t.columns.iter().any(|col| col.name == name),
                    "{}.{name}",
                    c.table()
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn open_never_panics(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let r = ring("k1", 1);
            let mut f = MAGIC.to_vec();
            f.extend_from_slice(&tail);
            let _ = open(&f, &r, 9);
        }
    }
}
