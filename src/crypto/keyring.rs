//! Master keys and the sealed-blob format.
//!
//! Blob layout (version 1), all stored as one binary column:
//!
//! ```text
//! 0x01 | key_id_len:u8 | key_id (ASCII) | nonce:12 | ciphertext || tag:16
//! ```
//!
//! The AAD binds the blob to where it lives — a [`SealedColumn`] and a row
//! id (`sealed.rs`) — and to the key id, so a blob copied into another row
//! or relabelled with another key id does not open.
//!
//! Master keys come from one place, [`load_master_keys`]: the text of
//! `master_key` or a key file (`master_key_file`, DATA_DIR/master.key).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;
use zeroize::Zeroizing;

pub use super::sealed::{SealContext, SealedColumn};

const BLOB_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed blob is malformed ({0}); the row was damaged or edited by hand")]
    Malformed(&'static str),
    #[error("sealed blob uses blob format version {0}, this floatlm understands version 1")]
    UnknownVersion(u8),
    #[error(
        "sealed blob was sealed with master key '{0}', which this instance is not configured with"
    )]
    UnknownKey(String),
    #[error("sealed blob does not open with master key '{0}': it was tampered with, moved from another row, or sealed with a different key of the same id")]
    Tampered(String),
}

/// One 32-byte master key with its id. The bytes are zeroized on drop.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Why a master key specification was refused; never echoes key bytes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeySpecError {
    #[error("expected ID:BASE64 (for example k1:<44 base64 characters>), found no ':'")]
    MissingId,
    #[error("key id '{0}' is invalid: use 1-32 characters of A-Z a-z 0-9 _ -")]
    BadId(String),
    #[error("key '{0}' is not valid base64")]
    BadBase64(String),
    #[error("key '{0}' decodes to {1} bytes, a master key is exactly 32 bytes (generate one with: head -c 32 /dev/urandom | base64)")]
    BadLength(String, usize),
    #[error("key id '{0}' is listed twice")]
    Duplicate(String),
    #[error("no master key given")]
    Empty,
}

pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl MasterKey {
    pub fn new(id: &str, key: [u8; 32]) -> Result<Self, KeySpecError> {
        if !valid_key_id(id) {
            return Err(KeySpecError::BadId(id.to_string()));
        }
        Ok(MasterKey {
            id: id.to_string(),
            key: Zeroizing::new(key),
        })
    }

    /// A fresh random key.
    pub fn generate(id: &str) -> Result<Self, KeySpecError> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, key.as_mut());
        Self::new(id, *key)
    }

    /// Parses `ID:BASE64`.
    pub fn parse(spec: &str) -> Result<Self, KeySpecError> {
        let spec = spec.trim();
        let (id, b64) = spec.split_once(':').ok_or(KeySpecError::MissingId)?;
        if !valid_key_id(id) {
            return Err(KeySpecError::BadId(id.to_string()));
        }
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| KeySpecError::BadBase64(id.to_string()))?,
        );
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeySpecError::BadLength(id.to_string(), bytes.len()))?;
        Self::new(id, key)
    }

    /// `ID:BASE64`, for writing a generated key file.
    pub fn to_spec(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{}:{}",
            self.id,
            base64::engine::general_purpose::STANDARD.encode(self.key.as_ref())
        ))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Key material for deriving sub-keys (HKDF input); never for direct use.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.key
    }
}

/// Where master keys are loaded from by [`load_master_keys`].
#[derive(Debug, Clone, Copy)]
pub enum KeySource<'a> {
    /// A list of `ID:BASE64` keys given as text (`master_key` from a flag,
    /// the environment or the config file).
    Text(&'a str),
    /// A file holding such a list (`master_key_file`, DATA_DIR/master.key).
    File(&'a Path),
}

/// Why master keys were not loaded. Each names the file it read, if any;
/// none echoes key bytes.
#[derive(Debug, Error)]
pub enum KeyLoadError {
    #[error("master key file {} does not exist", .0.display())]
    NoFile(PathBuf),
    #[error("cannot read master key file {}: {why}; make it readable by the user floatlm runs as", path.display())]
    Read { path: PathBuf, why: String },
    #[error("{0}")]
    Invalid(KeySpecError),
    #[error("master key file {}: {why}", path.display())]
    InvalidFile { path: PathBuf, why: KeySpecError },
}

/// Loads master keys: the one place where key text or a key file becomes
/// [`MasterKey`]s (configuration, start-up and the backup commands all come
/// here). What a file holds is kept as a [`Secret`](super::Secret) while
/// it is parsed.
pub fn load_master_keys(source: KeySource<'_>) -> Result<Vec<MasterKey>, KeyLoadError> {
    let path = match source {
        KeySource::Text(text) => return parse_key_list(text).map_err(KeyLoadError::Invalid),
        KeySource::File(path) => path,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => super::Secret::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyLoadError::NoFile(path.to_path_buf()))
        }
        Err(e) => {
            return Err(KeyLoadError::Read {
                path: path.to_path_buf(),
                why: e.to_string(),
            })
        }
    };
    parse_key_list(text.expose()).map_err(|why| KeyLoadError::InvalidFile {
        path: path.to_path_buf(),
        why,
    })
}

/// Parses a list of `ID:BASE64` keys separated by commas, whitespace or
/// newlines. `#` starts a comment that runs to the end of its line (neither
/// key ids nor base64 contain it), so a key file can say which key is which.
fn parse_key_list(text: &str) -> Result<Vec<MasterKey>, KeySpecError> {
    let mut keys: Vec<MasterKey> = Vec::new();
    for spec in text
        .lines()
        .map(|line| line.split_once('#').map_or(line, |(keys, _comment)| keys))
        .flat_map(|line| line.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|s| !s.is_empty())
    {
        let k = MasterKey::parse(spec)?;
        if keys.iter().any(|o| o.id == k.id) {
            return Err(KeySpecError::Duplicate(k.id));
        }
        keys.push(k);
    }
    if keys.is_empty() {
        return Err(KeySpecError::Empty);
    }
    Ok(keys)
}

/// Every configured master key; the last one listed seals, all of them open.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl Keyring {
    pub fn new(keys: Vec<MasterKey>) -> Result<Self, KeySpecError> {
        if keys.is_empty() {
            return Err(KeySpecError::Empty);
        }
        Ok(Keyring { keys })
    }

    /// The key new blobs are sealed with.
    pub fn sealing_key(&self) -> &MasterKey {
        self.keys.last().expect("keyring is never empty")
    }

    pub fn key(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// `id:fingerprint` of every key, comma separated: the fingerprint is
    /// the first 8 bytes (hex) of an HMAC of a fixed label under the key, so
    /// instances can tell whether they hold the same key without revealing it.
    pub fn fingerprints(&self) -> String {
        use hmac::Mac;
        self.keys
            .iter()
            .map(|k| {
                let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(k.key.as_ref())
                    .expect("any key length");
                mac.update(b"floatlm key fingerprint v1");
                format!(
                    "{}:{}",
                    k.id,
                    hex::encode(&mac.finalize().into_bytes()[..8])
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Seals `plaintext` under the sealing key for the row named by `ctx`.
    pub fn seal(&self, ctx: SealContext<'_>, plaintext: &[u8]) -> Vec<u8> {
        seal_with(self.sealing_key(), ctx, plaintext)
    }

    /// Opens a blob sealed by any key of this ring, for the row named by `ctx`.
    pub fn open(&self, ctx: SealContext<'_>, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let (key_id, nonce, ct) = split_blob(blob)?;
        let key = self
            .key(key_id)
            .ok_or_else(|| SealError::UnknownKey(key_id.to_string()))?;
        let cipher = Aes256Gcm::new_from_slice(key.key.as_ref()).expect("32-byte key");
        let aad = ctx.aad(key_id);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| SealError::Tampered(key_id.to_string()))
    }

    /// The id of the key a blob claims to be sealed with.
    pub fn blob_key_id(blob: &[u8]) -> Result<&str, SealError> {
        split_blob(blob).map(|(id, _, _)| id)
    }
}

fn seal_with(key: &MasterKey, ctx: SealContext<'_>, plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new_from_slice(key.key.as_ref()).expect("32-byte key");
    let nonce_bytes = super::random_bytes(NONCE_LEN);
    let aad = ctx.aad(&key.id);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce_bytes),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut blob = Vec::with_capacity(2 + key.id.len() + NONCE_LEN + ct.len());
    blob.push(BLOB_VERSION);
    blob.push(key.id.len() as u8);
    blob.extend_from_slice(key.id.as_bytes());
    blob.extend_from_slice(&nonce_bytes);
    blob.extend_from_slice(&ct);
    blob
}

fn split_blob(blob: &[u8]) -> Result<(&str, &[u8], &[u8]), SealError> {
    let (&version, rest) = blob.split_first().ok_or(SealError::Malformed("empty"))?;
    if version != BLOB_VERSION {
        return Err(SealError::UnknownVersion(version));
    }
    let (&id_len, rest) = rest
        .split_first()
        .ok_or(SealError::Malformed("truncated header"))?;
    let id_len = id_len as usize;
    if rest.len() < id_len + NONCE_LEN + TAG_LEN {
        return Err(SealError::Malformed("truncated"));
    }
    let (id, rest) = rest.split_at(id_len);
    let id = std::str::from_utf8(id).map_err(|_| SealError::Malformed("key id is not text"))?;
    if !valid_key_id(id) {
        return Err(SealError::Malformed("invalid key id"));
    }
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    Ok((id, nonce, ct))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(vec![MasterKey::new("k1", [7; 32]).unwrap()]).unwrap()
    }

    #[test]
    fn seal_open_round_trip() {
        let r = ring();
        let ctx = SealedColumn::License.at("L1");
        let blob = r.seal(ctx, b"hello");
        assert_eq!(&r.open(ctx, &blob).unwrap()[..], b"hello");
    }

    #[test]
    fn moved_blob_does_not_open() {
        let r = ring();
        let blob = r.seal(SealedColumn::License.at("L1"), b"hello");
        let err = r.open(SealedColumn::License.at("L2"), &blob).unwrap_err();
        assert_eq!(err, SealError::Tampered("k1".into()));
        let err = r.open(SealedColumn::Identity.at("L1"), &blob).unwrap_err();
        assert_eq!(err, SealError::Tampered("k1".into()), "another column");
    }

    /// Blobs sealed outside this code (Python's `cryptography`, key [7; 32],
    /// nonce 0..12, plaintext "floatlm") with the AAD every version since
    /// 0.1 writes: existing databases and backups keep opening.
    #[test]
    fn blobs_sealed_by_earlier_versions_still_open() {
        let r = ring();
        for (column, row, blob) in [
            (
                SealedColumn::Canary,
                "k1",
                "01026b31000102030405060708090a0b7eed86116965b41114697dae8c0f3eb0ed1e5d7d80c84e",
            ),
            (
                SealedColumn::License,
                "L1",
                "01026b31000102030405060708090a0b7eed86116965b4ecb027fa239de770bcda2ac1fb8e0cb1",
            ),
            (
                SealedColumn::Identity,
                "stand-in",
                "01026b31000102030405060708090a0b7eed86116965b4c36dd48067908ab63ce32051fb304583",
            ),
            (
                SealedColumn::TicketKey,
                "1700000000",
                "01026b31000102030405060708090a0b7eed86116965b421a42c1c5d1c5acd8f479e04bddb90a3",
            ),
        ] {
            let opened = r.open(column.at(row), &hex::decode(blob).unwrap());
            assert_eq!(&opened.unwrap()[..], b"floatlm", "{column:?}");
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let r = ring();
        let ctx = SealedColumn::TicketKey.at("1");
        let blob = r.seal(ctx, b"payload");
        for i in 0..blob.len() {
            let mut b = blob.clone();
            b[i] ^= 0x01;
            assert!(r.open(ctx, &b).is_err(), "byte {i}");
        }
    }

    #[test]
    fn newest_key_seals_and_old_keys_open() {
        let old = Keyring::new(vec![MasterKey::new("k1", [1; 32]).unwrap()]).unwrap();
        let both = Keyring::new(vec![
            MasterKey::new("k1", [1; 32]).unwrap(),
            MasterKey::new("k2", [2; 32]).unwrap(),
        ])
        .unwrap();
        let ctx = SealedColumn::TicketKey.at("1");
        let blob = old.seal(ctx, b"x");
        assert_eq!(&both.open(ctx, &blob).unwrap()[..], b"x");
        let blob2 = both.seal(ctx, b"y");
        assert_eq!(Keyring::blob_key_id(&blob2).unwrap(), "k2");
        assert_eq!(
            old.open(ctx, &blob2).unwrap_err(),
            SealError::UnknownKey("k2".into())
        );
    }

    #[test]
    fn key_files_may_carry_comments() {
        let a = MasterKey::new("k1", [1; 32]).unwrap();
        let b = MasterKey::new("k2", [2; 32]).unwrap();
        let text = format!(
            "# floatlm master keys, oldest first\n{} # retired 2026-01, still opens old rows\n\n  {}\t# seals\n",
            a.to_spec().as_str(),
            b.to_spec().as_str()
        );
        let keys = parse_key_list(&text).unwrap();
        assert_eq!(
            keys.iter().map(|k| k.id()).collect::<Vec<_>>(),
            ["k1", "k2"]
        );
        assert_eq!(
            parse_key_list("# only a comment\n").unwrap_err(),
            KeySpecError::Empty
        );
    }

    #[test]
    fn key_specs_are_validated_without_echoing_bytes() {
        assert_eq!(
            MasterKey::parse("nokey").unwrap_err(),
            KeySpecError::MissingId
        );
        assert!(matches!(
            MasterKey::parse("k1:aGVsbG8="),
            Err(KeySpecError::BadLength(_, 5))
        ));
        let k = MasterKey::generate("k9").unwrap();
        let parsed = MasterKey::parse(&k.to_spec()).unwrap();
        assert_eq!(parsed.bytes(), k.bytes());
        assert!(!format!("{k:?}").contains(&k.to_spec()[3..]));
        assert!(parse_key_list("k1:AAAA, k1:BBBB").is_err());
    }

    #[test]
    fn keys_load_from_text_and_files_and_errors_name_the_file() {
        let k = MasterKey::generate("k3").unwrap();
        let spec = k.to_spec();
        let keys = load_master_keys(KeySource::Text(&spec)).unwrap();
        assert_eq!(keys[0].bytes(), k.bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        assert!(matches!(
            load_master_keys(KeySource::File(&path)),
            Err(KeyLoadError::NoFile(p)) if p == path
        ));
        std::fs::write(
            &path,
            format!("#old\nk1:{}\n{}\n", "A".repeat(43) + "=", spec.as_str()),
        )
        .unwrap();
        let keys = load_master_keys(KeySource::File(&path)).unwrap();
        assert_eq!(
            keys.iter().map(|k| k.id()).collect::<Vec<_>>(),
            ["k1", "k3"]
        );
        std::fs::write(&path, format!("{}\n{}\n", spec.as_str(), spec.as_str())).unwrap();
        let e = load_master_keys(KeySource::File(&path))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(path.to_str().unwrap()) && e.contains("'k3' is listed twice"),
            "{e}"
        );
        assert!(!e.contains(&spec[3..]), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn open_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = ring().open(SealedColumn::TicketKey.at("1"), &data);
        }
    }
}
