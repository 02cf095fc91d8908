//! Master keys and the sealed-blob format.
//!
//! Blob layout (version 1), all stored as one binary column:
//!
//! ```text
//! 0x01 | key_id_len:u8 | key_id (ASCII) | nonce:12 | ciphertext || tag:16
//! ```
//!
//! The AAD binds the blob to where it lives — table, column, row id — and to
//! the key id, so a blob copied into another row or relabelled with another
//! key id does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use std::fmt;
use thiserror::Error;
use zeroize::Zeroizing;

const BLOB_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Where a sealed blob lives; becomes the AAD.
#[derive(Debug, Clone, Copy)]
pub struct SealContext<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub row_id: &'a str,
}

impl<'a> SealContext<'a> {
    pub fn new(table: &'a str, column: &'a str, row_id: &'a str) -> Self {
        SealContext {
            table,
            column,
            row_id,
        }
    }

    fn aad(&self, key_id: &str) -> Vec<u8> {
        let mut aad = b"floatlm-seal-v1".to_vec();
        for part in [self.table, self.column, self.row_id, key_id] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

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

/// Why a master key file was not read: the file could not be read, or
/// what it holds is not a key list. Each names the file.
#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("cannot read {0}")]
    Read(String),
    #[error("{0}")]
    Parse(String),
}

/// Reads a master key file (`DATA_DIR/master.key`): None when there is no
/// such file; otherwise its keys.
pub fn read_key_file(path: &std::path::Path) -> Result<Option<Vec<MasterKey>>, KeyFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => super::Secret::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(KeyFileError::Read(format!("{}: {e}", path.display()))),
    };
    parse_key_list(text.expose())
        .map(Some)
        .map_err(|e| KeyFileError::Parse(format!("{}: {e}", path.display())))
}

/// Parses a list of `ID:BASE64` keys separated by commas, whitespace or newlines.
pub fn parse_key_list(text: &str) -> Result<Vec<MasterKey>, KeySpecError> {
    let mut keys: Vec<MasterKey> = Vec::new();
    for spec in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty() && !s.starts_with('#'))
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
        let ctx = SealContext::new("licenses", "blob", "L1");
        let blob = r.seal(ctx, b"hello");
        assert_eq!(&r.open(ctx, &blob).unwrap()[..], b"hello");
    }

    #[test]
    fn moved_blob_does_not_open() {
        let r = ring();
        let blob = r.seal(SealContext::new("licenses", "blob", "L1"), b"hello");
        let err = r
            .open(SealContext::new("licenses", "blob", "L2"), &blob)
            .unwrap_err();
        assert_eq!(err, SealError::Tampered("k1".into()));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let r = ring();
        let ctx = SealContext::new("t", "c", "1");
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
        let ctx = SealContext::new("t", "c", "1");
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

    proptest::proptest! {
        #[test]
        fn open_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = ring().open(SealContext::new("t", "c", "1"), &data);
        }
    }
}
