//! Vendor-signed license files.
//!
//! A license file is JSON:
//!
//! ```json
//! {"format": "floatlm-license-v1", "key_id": "<16 hex>",
//!  "payload": "<base64 of the payload JSON>", "signature": "<base64 Ed25519>"}
//! ```
//!
//! The signature covers `"floatlm-license-v1\0" || payload bytes`, so the
//! exact bytes the vendor signed are the bytes the server parses; nothing is
//! re-serialised before verification.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

use super::valid_name;

pub const FORMAT: &str = "floatlm-license-v1";
const SIGNING_DOMAIN: &[u8] = b"floatlm-license-v1\0";
/// Largest license file accepted, in bytes.
pub const MAX_LICENSE_BYTES: usize = 256 * 1024;
/// Largest seat count of one feature; slot rows are created up front.
pub const MAX_SEATS: u32 = 100_000;

#[derive(Debug, Error)]
pub enum LicenseError {
    #[error("license file is larger than {MAX_LICENSE_BYTES} bytes")]
    TooLarge,
    #[error("license file is not a floatlm license: {0}")]
    Malformed(String),
    #[error("license format '{0}' is not supported; this floatlm reads '{FORMAT}'")]
    UnknownFormat(String),
    #[error("license is signed by vendor key {0}, which this server does not trust (configure it with vendor_keys)")]
    UnknownKey(String),
    #[error("license signature does not verify against vendor key {0}: the file was altered or signed with another key")]
    BadSignature(String),
    #[error("license definition is invalid: {0}")]
    Invalid(String),
    #[error(
        "license {0} has expired (every feature's expiry is in the past); nothing was applied"
    )]
    Expired(String),
}

/// One licensed feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureDef {
    pub name: String,
    pub seats: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
}

/// What the vendor signs: the readable definition (also the TOML input of
/// `floatlm vendor sign`, with `[[feature]]` tables).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseDef {
    pub license_id: String,
    pub serial: u64,
    pub customer: String,
    #[serde(rename = "feature", alias = "features")]
    pub features: Vec<FeatureDef>,
}

impl LicenseDef {
    /// Checks every rule a server relies on; the first violation is reported.
    pub fn validate(&self) -> Result<(), LicenseError> {
        let bad = |m: String| Err(LicenseError::Invalid(m));
        if !valid_name(&self.license_id) {
            return bad(format!(
                "license_id '{}' must be 1-64 characters of A-Z a-z 0-9 _ . -",
                self.license_id
            ));
        }
        if self.serial == 0 || self.serial > i64::MAX as u64 {
            return bad("serial must be between 1 and 2^63-1".into());
        }
        if self.customer.len() > 256 {
            return bad("customer is longer than 256 characters".into());
        }
        if self.features.is_empty() {
            return bad("a license needs at least one [[feature]]".into());
        }
        if self.features.len() > 1000 {
            return bad("a license may hold at most 1000 features".into());
        }
        for (i, f) in self.features.iter().enumerate() {
            if !valid_name(&f.name) {
                return bad(format!(
                    "feature name '{}' must be 1-64 characters of A-Z a-z 0-9 _ . -",
                    f.name
                ));
            }
            // Names differing only in case would be one feature to a MySQL
            // unique key and two to everything else: refused everywhere.
            if self.features[..i]
                .iter()
                .any(|o| o.name.eq_ignore_ascii_case(&f.name))
            {
                return bad(format!(
                    "feature '{}' is listed twice (names differing only in upper/lower case count as the same)",
                    f.name
                ));
            }
            if f.seats == 0 || f.seats > MAX_SEATS {
                return bad(format!(
                    "feature '{}' has {} seats; allowed is 1..={MAX_SEATS}",
                    f.name, f.seats
                ));
            }
            if f.version
                .as_ref()
                .is_some_and(|v| v.is_empty() || v.len() > 64)
            {
                return bad(format!(
                    "feature '{}' has an empty or over-long version",
                    f.name
                ));
            }
            if let (Some(nb), Some(ex)) = (f.not_before, f.expires) {
                if ex <= nb {
                    return bad(format!("feature '{}' expires before it starts", f.name));
                }
            }
        }
        Ok(())
    }
}

/// The file as it travels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LicenseFile {
    format: String,
    key_id: String,
    payload: String,
    signature: String,
}

/// A license whose signature has been verified against a trusted vendor key.
#[derive(Debug, Clone)]
pub struct VerifiedLicense {
    pub def: LicenseDef,
    /// Vendor key id that signed it.
    pub vendor_key_id: String,
    /// The license file text exactly as received; this is what gets sealed.
    pub raw: String,
    /// SHA-256 of `raw`, to make re-applying the same file a no-op.
    pub digest: String,
}

/// A vendor's public key, trusted by the server.
#[derive(Clone, PartialEq, Eq)]
pub struct VendorKey {
    key: VerifyingKey,
}

impl fmt::Debug for VendorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VendorKey({})", self.id())
    }
}

impl VendorKey {
    /// The first 8 bytes of SHA-256 of the public key, hex.
    pub fn id(&self) -> String {
        key_id(&self.key)
    }

    /// Parses the text of a `.pub` file or a bare base64 key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let b64 = strip_armor(text, "FLOATLM VENDOR PUBLIC KEY");
        let bytes = B64
            .decode(b64.trim())
            .map_err(|_| "not base64 (expected the contents of a vendor .pub file)".to_string())?;
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "an Ed25519 public key is 32 bytes, this one is {}",
                bytes.len()
            )
        })?;
        let key = VerifyingKey::from_bytes(&arr)
            .map_err(|_| "not a valid Ed25519 public key".to_string())?;
        Ok(VendorKey { key })
    }

    /// Text of a `.pub` file.
    pub fn to_text(&self) -> String {
        armor(
            "FLOATLM VENDOR PUBLIC KEY",
            &B64.encode(self.key.as_bytes()),
        )
    }
}

/// A vendor's signing key (private). Zeroized on drop by ed25519-dalek.
pub struct VendorSigningKey {
    key: SigningKey,
}

impl fmt::Debug for VendorSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VendorSigningKey({}, [redacted])",
            key_id(&self.key.verifying_key())
        )
    }
}

impl VendorSigningKey {
    pub fn generate() -> Self {
        VendorSigningKey {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let b64 = strip_armor(text, "FLOATLM VENDOR SIGNING KEY");
        let bytes =
            zeroize::Zeroizing::new(B64.decode(b64.trim()).map_err(|_| {
                "not base64 (expected the contents of a vendor .key file)".to_string()
            })?);
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| "a vendor signing key is 32 bytes".to_string())?;
        Ok(VendorSigningKey {
            key: SigningKey::from_bytes(&arr),
        })
    }

    pub fn to_text(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(armor(
            "FLOATLM VENDOR SIGNING KEY",
            &B64.encode(self.key.to_bytes()),
        ))
    }

    pub fn public(&self) -> VendorKey {
        VendorKey {
            key: self.key.verifying_key(),
        }
    }

    /// Validates `def` and produces the text of a signed license file.
    pub fn sign(&self, def: &LicenseDef) -> Result<String, LicenseError> {
        def.validate()?;
        let payload = serde_json::to_vec(def).map_err(|e| LicenseError::Invalid(e.to_string()))?;
        let mut msg = SIGNING_DOMAIN.to_vec();
        msg.extend_from_slice(&payload);
        let sig = self.key.sign(&msg);
        let file = LicenseFile {
            format: FORMAT.to_string(),
            key_id: key_id(&self.key.verifying_key()),
            payload: B64.encode(&payload),
            signature: B64.encode(sig.to_bytes()),
        };
        let mut text = serde_json::to_string_pretty(&file).expect("plain struct serialises");
        text.push('\n');
        Ok(text)
    }
}

fn key_id(key: &VerifyingKey) -> String {
    crate::crypto::sha256_hex(key.as_bytes())[..16].to_string()
}

fn armor(label: &str, b64: &str) -> String {
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}

fn strip_armor<'a>(text: &'a str, label: &str) -> &'a str {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b + begin.len() <= e => &text[b + begin.len()..e],
        _ => text,
    }
}

/// Parses and verifies a license file against the trusted vendor keys.
/// Nothing about the payload is trusted before the signature checks out.
pub fn verify(text: &str, trusted: &[VendorKey]) -> Result<VerifiedLicense, LicenseError> {
    if text.len() > MAX_LICENSE_BYTES {
        return Err(LicenseError::TooLarge);
    }
    let file: LicenseFile =
        serde_json::from_str(text).map_err(|e| LicenseError::Malformed(e.to_string()))?;
    if file.format != FORMAT {
        return Err(LicenseError::UnknownFormat(
            file.format.chars().take(64).collect(),
        ));
    }
    let key = trusted
        .iter()
        .find(|k| k.id() == file.key_id)
        .ok_or_else(|| LicenseError::UnknownKey(file.key_id.chars().take(64).collect()))?;
    let payload = B64
        .decode(file.payload.as_bytes())
        .map_err(|_| LicenseError::Malformed("payload is not base64".into()))?;
    let sig_bytes: [u8; 64] = B64
        .decode(file.signature.as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            LicenseError::Malformed("signature is not 64 base64-encoded bytes".into())
        })?;
    let mut msg = SIGNING_DOMAIN.to_vec();
    msg.extend_from_slice(&payload);
    key.key
        .verify(&msg, &Signature::from_bytes(&sig_bytes))
        .map_err(|_| LicenseError::BadSignature(key.id()))?;
    let def: LicenseDef = serde_json::from_slice(&payload)
        .map_err(|e| LicenseError::Malformed(format!("signed payload: {e}")))?;
    def.validate()?;
    Ok(VerifiedLicense {
        def,
        vendor_key_id: key.id(),
        digest: crate::crypto::sha256_hex(text.as_bytes()),
        raw: text.to_string(),
    })
}

/// Parses a readable TOML definition (the input of `floatlm vendor sign`).
pub fn parse_definition(toml_text: &str) -> Result<LicenseDef, LicenseError> {
    let def: LicenseDef =
        toml::from_str(toml_text).map_err(|e| LicenseError::Invalid(e.to_string()))?;
    def.validate()?;
    Ok(def)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> LicenseDef {
        parse_definition(
            r#"
license_id = "ACME-1"
serial = 1
customer = "ACME"
[[feature]]
name = "demo"
seats = 5
[[feature]]
name = "pro"
seats = 2
version = "2.x"
expires = "2030-01-01T00:00:00Z"
"#,
        )
        .unwrap()
    }

    #[test]
    fn sign_and_verify() {
        let k = VendorSigningKey::generate();
        let text = k.sign(&def()).unwrap();
        let v = verify(&text, &[k.public()]).unwrap();
        assert_eq!(v.def, def());
        assert_eq!(v.vendor_key_id, k.public().id());
    }

    #[test]
    fn unknown_key_and_bad_signature() {
        let k = VendorSigningKey::generate();
        let other = VendorSigningKey::generate();
        let text = k.sign(&def()).unwrap();
        assert!(matches!(
            verify(&text, &[other.public()]),
            Err(LicenseError::UnknownKey(_))
        ));
        // Re-sign the payload with another key but keep the trusted key id.
        let mut file: LicenseFile = serde_json::from_str(&text).unwrap();
        let forged: LicenseFile = serde_json::from_str(&other.sign(&def()).unwrap()).unwrap();
        file.signature = forged.signature;
        let text = serde_json::to_string(&file).unwrap();
        assert!(matches!(
            verify(&text, &[k.public()]),
            Err(LicenseError::BadSignature(_))
        ));
    }

    #[test]
    fn every_payload_change_breaks_the_signature() {
        let k = VendorSigningKey::generate();
        let text = k.sign(&def()).unwrap();
        let file: LicenseFile = serde_json::from_str(&text).unwrap();
        let mut payload = B64.decode(&file.payload).unwrap();
        payload[20] ^= 1;
        let tampered = LicenseFile {
            payload: B64.encode(&payload),
            ..file
        };
        let text = serde_json::to_string(&tampered).unwrap();
        assert!(verify(&text, &[k.public()]).is_err());
    }

    #[test]
    fn definitions_are_validated() {
        let mut d = def();
        d.features[0].seats = 0;
        assert!(d.validate().is_err());
        let mut d = def();
        d.features[1].name = "demo".into();
        assert!(d.validate().is_err());
        assert!(parse_definition("license_id = 'x'").is_err());
    }

    #[test]
    fn keys_round_trip_through_text() {
        let k = VendorSigningKey::generate();
        let k2 = VendorSigningKey::parse(&k.to_text()).unwrap();
        assert_eq!(k.public(), k2.public());
        assert_eq!(VendorKey::parse(&k.public().to_text()).unwrap(), k.public());
        assert!(!format!("{k:?}").contains(&*B64.encode(k.key.to_bytes())));
    }

    proptest::proptest! {
        #[test]
        fn verify_never_panics(s in ".{0,400}") {
            let k = VendorSigningKey::generate();
            let _ = verify(&s, &[k.public()]);
        }
    }
}
