//! Identity strings (`ID:SECRET@ADDRESS`) and server addresses: plain
//! `HOST:PORT`, `https://HOST[:PORT]` (or any address on port 443) reached
//! over TLS, `http://HOST[:PORT]` to force plain HTTP, each optionally
//! prefixed by an affinity group (`eu:HOST:PORT`, `eu:https://HOST`).

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
    /// Reached over HTTPS (written `https://…`, or its port is 443).
    pub tls: bool,
    /// The affinity group this server belongs to, if it was tagged with one.
    pub group: Option<String>,
}

impl ServerSpec {
    /// `https://HOST:PORT` or `http://HOST:PORT`.
    pub(crate) fn base_url(&self) -> String {
        base_url(self.tls, &self.address)
    }

    /// The address as written back: `https://HOST:PORT` for TLS servers
    /// (so that a reader sees how it is reached), else `HOST:PORT`.
    pub fn display_address(&self) -> String {
        if self.tls {
            format!("https://{}", self.address)
        } else {
            self.address.clone()
        }
    }

    /// `ID:SECRET` and an address: the identity string the CLI and the
    /// configuration file build from an address-only server entry.
    pub(crate) fn new(identity_id: &str, secret: &str, addr: ServerAddress) -> ServerSpec {
        ServerSpec {
            identity_id: identity_id.to_string(),
            secret: Zeroizing::new(secret.to_string()),
            address: addr.host_port,
            tls: addr.tls,
            group: addr.group,
        }
    }
}

pub(crate) fn base_url(tls: bool, host_port: &str) -> String {
    format!("{}://{host_port}", if tls { "https" } else { "http" })
}

impl fmt::Debug for ServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ServerSpec({}:[redacted]@{}",
            self.identity_id,
            self.display_address()
        )?;
        if let Some(g) = &self.group {
            write!(f, " group {g}")?;
        }
        f.write_str(")")
    }
}

/// A server address without credentials: `[GROUP:]HOST:PORT`,
/// `[GROUP:]https://HOST[:PORT]` or `[GROUP:]http://HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    /// HOST:PORT (the scheme's default port filled in).
    pub host_port: String,
    pub tls: bool,
    pub group: Option<String>,
}

impl ServerAddress {
    /// The URL prefix requests go to.
    pub fn base_url(&self) -> String {
        base_url(self.tls, &self.host_port)
    }
}

/// What a group name may be: short, letters, digits, `-` and `_`.
pub(crate) fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 32
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An address with no group prefix.
fn plain_address(s: &str) -> Result<(String, bool), String> {
    let (rest, scheme) = if let Some(r) = s.strip_prefix("https://") {
        (r, Some(true))
    } else if let Some(r) = s.strip_prefix("http://") {
        (r, Some(false))
    } else {
        (s, None)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err("an address has no path: write HOST:PORT or https://HOST[:PORT]".into());
    }
    // [v6]:PORT keeps its brackets; any other host has no ':' of its own.
    let split = match rest.rfind(']') {
        Some(end) if rest.starts_with('[') => match &rest[end + 1..] {
            "" => (rest, None),
            p => match p.strip_prefix(':') {
                Some(port) => (&rest[..=end], Some(port)),
                None => return Err("expected [IPV6]:PORT".into()),
            },
        },
        _ => match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let (host, port) = split;
    if host.is_empty() || host.contains(':') && !host.starts_with('[') {
        return Err("the address must be HOST:PORT or https://HOST[:PORT]".into());
    }
    let port = match (port, scheme) {
        (Some(p), _) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("'{p}' is not a port number (1-65535)"))?,
        (None, Some(true)) => 443,
        (None, Some(false)) => 80,
        (None, None) => return Err("the address must be HOST:PORT or https://HOST[:PORT]".into()),
    };
    let tls = scheme.unwrap_or(port == 443);
    Ok((format!("{host}:{port}"), tls))
}

impl FromStr for ServerAddress {
    type Err = String;

    /// `eu:h1:7000` is host h1 in group eu: a host never contains ':', so a
    /// leading `WORD:` followed by a whole address is a group.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some((g, rest)) = s.split_once(':') {
            if valid_group(g) && !rest.starts_with("//") {
                if let Ok((host_port, tls)) = plain_address(rest) {
                    return Ok(ServerAddress {
                        host_port,
                        tls,
                        group: Some(g.to_string()),
                    });
                }
            }
        }
        let (host_port, tls) = plain_address(s)?;
        Ok(ServerAddress {
            host_port,
            tls,
            group: None,
        })
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
        let (id, secret) = split_credentials(cred).map_err(|m| bad(&m))?;
        let addr: ServerAddress = address.parse().map_err(|m: String| bad(&m))?;
        Ok(ServerSpec::new(id, secret, addr))
    }
}

/// `ID:SECRET`, checked.
pub(crate) fn split_credentials(cred: &str) -> Result<(&str, &str), String> {
    let (id, secret) = cred
        .split_once(':')
        .ok_or("expected ID:SECRET@HOST:PORT (no ':' before '@')")?;
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("the identity id must be letters and digits".into());
    }
    if secret.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> ServerAddress {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn addresses_schemes_ports_and_groups() {
        assert_eq!(
            a("h1:7000"),
            ServerAddress {
                host_port: "h1:7000".into(),
                tls: false,
                group: None
            }
        );
        assert!(a("lic.example.com:443").tls);
        assert_eq!(
            a("https://lic.example.com").host_port,
            "lic.example.com:443"
        );
        assert!(a("https://lic.example.com:8443/").tls);
        let plain = a("http://lic.example.com:443");
        assert!(!plain.tls);
        assert_eq!(a("http://h").host_port, "h:80");
        let g = a("eu:h1:7000");
        assert_eq!(
            (g.host_port.as_str(), g.tls, g.group.as_deref()),
            ("h1:7000", false, Some("eu"))
        );
        let g = a("us-east:https://h3");
        assert_eq!(
            (g.host_port.as_str(), g.tls, g.group.as_deref()),
            ("h3:443", true, Some("us-east"))
        );
        assert_eq!(a("[::1]:8990").host_port, "[::1]:8990");
        assert_eq!(a("eu:[::1]:8990").group.as_deref(), Some("eu"));
        for bad in [
            "h1",
            "h1:0",
            "h1:x",
            "eu:h1",
            "https://h/x",
            "a:b:c:1",
            ":1",
            "https://",
        ] {
            assert!(bad.parse::<ServerAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_strings_carry_tls_and_group() {
        let s: ServerSpec = "abc:s3cr@t@eu:https://h:8443".parse().unwrap();
        assert_eq!(s.identity_id, "abc");
        assert_eq!(&*s.secret, "s3cr@t");
        assert!(s.tls);
        assert_eq!(s.group.as_deref(), Some("eu"));
        assert_eq!(s.base_url(), "https://h:8443");
        assert!(!format!("{s:?}").contains("s3cr"));
    }
}
