//! Client identities: the `ID:SECRET@HOST:PORT` string applications hold.

use crate::crypto::Secret;
use std::fmt;
use std::str::FromStr;

/// A parsed identity string. The secret never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityString {
    pub id: String,
    pub secret: Secret,
    pub address: String,
}

impl fmt::Debug for IdentityString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityString({}:[redacted]@{})", self.id, self.address)
    }
}

impl IdentityString {
    /// The full string, secret included: only for handing to the user once.
    pub fn reveal(&self) -> String {
        format!("{}:{}@{}", self.id, self.secret.expose(), self.address)
    }
}

/// Identity ids are 16 lower-case hex characters.
pub fn valid_identity_id(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn new_identity_id() -> String {
    crate::crypto::random_hex(8)
}

/// A fresh 256-bit secret, base64url without padding.
pub fn new_identity_secret() -> Secret {
    use base64::Engine;
    Secret::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::crypto::random_bytes(32)),
    )
}

impl FromStr for IdentityString {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (cred, address) = s
            .rsplit_once('@')
            .ok_or("identity string must look like ID:SECRET@HOST:PORT (no '@' found)")?;
        let (id, secret) = cred
            .split_once(':')
            .ok_or("identity string must look like ID:SECRET@HOST:PORT (no ':' before '@')")?;
        if !valid_identity_id(id) {
            return Err("identity id must be 16 hex characters".into());
        }
        if secret.len() < 16 || secret.len() > 128 {
            return Err("identity secret has the wrong length".into());
        }
        let (host, port) = address
            .rsplit_once(':')
            .ok_or("identity string must end in @HOST:PORT")?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err("identity string must end in @HOST:PORT with a numeric port".into());
        }
        Ok(IdentityString {
            id: id.to_string(),
            secret: Secret::new(secret),
            address: address.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = IdentityString {
            id: new_identity_id(),
            secret: new_identity_secret(),
            address: "lic.example.com:8990".into(),
        };
        let parsed: IdentityString = id.reveal().parse().unwrap();
        assert_eq!(parsed, id);
        assert!(!format!("{parsed:?}").contains(id.secret.expose()));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "abc",
            "0123456789abcdef:short@h:1",
            "0123456789abcdef:0123456789abcdef0123@h:x",
        ] {
            assert!(s.parse::<IdentityString>().is_err(), "{s}");
        }
    }
}
