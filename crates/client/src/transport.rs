//! HTTP and TLS: the one `reqwest` client a [`crate::Client`] sends through
//! (rustls for `https://` servers: system and Mozilla roots, or only the
//! `ca_file`, or, named as such, no verification at all), `ping`, and what
//! a failed exchange is called.

use floatlm_protocol::PATH_PING;
use std::time::{Duration, Instant};

use crate::client::{Attempt, Options, PingInfo};
use crate::identity::ServerAddress;
use crate::ClientError;

/// The warning printed (stderr) and logged each time a client is created
/// with verification off.
pub const INSECURE_WARNING: &str = "floatlm client: WARNING: insecure_skip_tls_verify is on: \
     TLS certificates of license servers are NOT verified; anyone on the network path can \
     impersonate the server. Use ca_file for a private CA instead.";

/// The HTTP client for `options`: its timeouts, the cookie store (proxies
/// may pin a client with a cookie, nginx/floatlm-cookie.conf) and the TLS
/// trust it gives `https://` servers. Errors name the `ca_file`.
pub(crate) fn http_client(
    options: &Options,
    timeout: Duration,
    cookies: bool,
) -> Result<reqwest::Client, ClientError> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .cookie_store(cookies)
        .use_rustls_tls();
    if let Some(path) = &options.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            ClientError::Config(format!("ca_file {}: cannot read it: {e}", path.display()))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            ClientError::Config(format!(
                "ca_file {}: not a PEM certificate bundle: {e}",
                path.display()
            ))
        })?;
        if certs.is_empty() {
            return Err(ClientError::Config(format!(
                "ca_file {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            )));
        }
        // A private CA replaces the public roots: a certificate some public
        // CA issued for the name is not the license server's.
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if options.insecure_skip_tls_verify {
        eprintln!("{INSECURE_WARNING}");
        tracing::warn!("{INSECURE_WARNING}");
        b = b.danger_accept_invalid_certs(true);
    }
    b.build()
        .map_err(|e| ClientError::Config(format!("cannot set up HTTP/TLS: {}", chain(&e))))
}

/// `GET /sentinel/ldk/v1/ping` on one address (`HOST:PORT`,
/// `https://HOST[:PORT]`; a group prefix is ignored); no identity needed.
pub(crate) async fn ping(
    address: &str,
    timeout: Duration,
    options: &Options,
) -> Result<PingInfo, ClientError> {
    let addr: ServerAddress = address
        .parse()
        .map_err(|e: String| ClientError::BadIdentity(format!("{address}: {e}")))?;
    let http = http_client(options, timeout, false)?;
    let start = Instant::now();
    let resp = http
        .get(format!("{}{PATH_PING}", addr.base_url()))
        .send()
        .await
        .map_err(|e| ClientError::Unreachable(format!("{address}: {}", describe(&e))))?;
    if !resp.status().is_success() {
        return Err(ClientError::Server {
            server: address.into(),
            message: format!("HTTP {}", resp.status()),
        });
    }
    let mut info: PingInfo = resp.json().await.map_err(|e| ClientError::Server {
        server: address.into(),
        message: format!("not a floatlm server: {e}"),
    })?;
    info.round_trip = start.elapsed();
    Ok(info)
}

/// Every message in an error's source chain, outermost first, deduplicated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let m = err.to_string();
        if !parts.iter().any(|p| p.contains(&m)) {
            parts.push(m);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// What went wrong with one exchange, in words a user acts on: a TLS
/// failure names the certificate problem rustls found.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let full = chain(e);
    // Classified without the URL: the protocol's own paths (`…/handshake`)
    // and host names (`tls.example.com`) are no TLS failure.
    let lower = match e.url() {
        Some(url) => full.replace(url.as_str(), ""),
        None => full.clone(),
    }
    .to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        // The innermost message is rustls's ("invalid peer certificate: UnknownIssuer").
        let inner = full.rsplit(": ").next().unwrap_or(&full);
        let detail = if let Some(at) = full.to_ascii_lowercase().find("invalid peer certificate") {
            full[at..].to_string()
        } else {
            inner.to_string()
        };
        return format!(
            "TLS certificate problem: {detail} (check ca_file, or that the server's certificate \
             is valid for this host name)"
        );
    }
    if e.is_connect() {
        "connection refused or unreachable".into()
    } else {
        full
    }
}

/// A non-success answer: 502/503/504 may be a proxy's, worth one more try.
pub(crate) fn failover(status: reqwest::StatusCode, body: &[u8]) -> Attempt {
    let msg = http_error(status, body);
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string));
    if matches!(code.as_deref(), Some("unavailable" | "storage_unavailable")) {
        // A floatlm instance itself (not a proxy) says its database is away.
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string));
        Attempt::Unavailable(message.unwrap_or(msg))
    } else if matches!(status.as_u16(), 502..=504) {
        Attempt::Gateway(msg)
    } else {
        Attempt::Failover(msg)
    }
}

pub(crate) fn http_error(status: reqwest::StatusCode, body: &[u8]) -> String {
    let msg = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    format!("HTTP {status} {msg}").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused connection to the handshake path is a refused connection,
    /// not a TLS problem (the URL's `/handshake` once made it read as one).
    #[tokio::test]
    async fn a_refused_connection_is_not_called_a_tls_problem() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = reqwest::Client::new()
            .post(format!("http://{addr}/sentinel/ldk/v1/handshake"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(describe(&e), "connection refused or unreachable");
    }
}
