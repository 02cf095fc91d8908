//! Identity strings: `ID:SECRET@HOST:PORT`.

use std::fmt;
use std::str::FromStr;
use zeroize::Zeroizing;

use crate::ClientError;

/// One server to talk to and the identity to talk to it with.
#[derive(Clone)]
pub struct ServerSpec {
    pub identity_id: String,
    pub(crate) secret: Zeroizing<String>,
    /// HOST:PORT.
    pub address: String,
}

impl fmt::Debug for ServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ServerSpec({}:[redacted]@{})",
            self.identity_id, self.address
        )
    }
}

impl FromStr for ServerSpec {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, ClientError> {
        let bad = |m: &str| ClientError::BadIdentity(m.to_string());
        let s = s.trim();
        let (cred, address) = s
            .rsplit_once('@')
            .ok_or_else(|| bad("expected ID:SECRET@HOST:PORT (no '@')"))?;
        let (id, secret) = cred
            .split_once(':')
            .ok_or_else(|| bad("expected ID:SECRET@HOST:PORT (no ':' before '@')"))?;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad("the identity id must be letters and digits"));
        }
        if secret.is_empty() {
            return Err(bad("the secret is empty"));
        }
        let port_ok = address
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            return Err(bad("the address must be HOST:PORT"));
        }
        Ok(ServerSpec {
            identity_id: id.to_string(),
            secret: Zeroizing::new(secret.to_string()),
            address: address.to_string(),
        })
    }
}
