//! Virtual clients: one protocol session each, sharing one HTTP connection
//! pool, so a single load generator can hold 100,000 sessions the way
//! 100,000 applications would (each with its own X-LDK-Instance).

use floatlm_protocol::envelope::{self, Binding, Direction};
use floatlm_protocol::handshake::ClientHandshake;
use floatlm_protocol::keys::SessionKeys;
use floatlm_protocol::messages::{AuthInfo, Request, Response};
use floatlm_protocol::{HEADER_INSTANCE, HEADER_SESSION, PATH_HANDSHAKE, PATH_REQUEST};
use std::sync::atomic::{AtomicU64, Ordering};

/// The parts of an identity string `ID:SECRET@HOST:PORT`.
#[derive(Clone)]
pub struct Identity {
    pub id: String,
    pub secret: String,
    pub address: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:[redacted]@{}", self.id, self.address)
    }
}

impl Identity {
    pub fn parse(s: &str) -> anyhow::Result<Identity> {
        let (cred, address) = s
            .trim()
            .rsplit_once('@')
            .ok_or_else(|| anyhow::anyhow!("identity string needs ID:SECRET@HOST:PORT"))?;
        let (id, secret) = cred
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("identity string needs ID:SECRET@HOST:PORT"))?;
        Ok(Identity {
            id: id.into(),
            secret: secret.into(),
            address: address.into(),
        })
    }

    /// The same credentials at another address (a proxy, or one instance).
    pub fn at(&self, address: &str) -> Identity {
        Identity {
            address: address.into(),
            ..self.clone()
        }
    }

    pub fn to_identity_string(&self) -> String {
        format!("{}:{}@{}", self.id, self.secret, self.address)
    }
}

/// A random X-LDK-Instance value, as the client library makes one.
pub fn client_id() -> String {
    format!(
        "{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

/// One application's session.
pub struct VSession {
    pub client_id: String,
    session: String,
    keys: SessionKeys,
    seq: AtomicU64,
    pub lease: std::sync::Mutex<Option<String>>,
}

async fn post(
    http: &reqwest::Client,
    url: String,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let mut rb = http.post(url).body(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    let bytes = r.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    Ok(bytes.to_vec())
}

/// A full handshake; `client_id` is sent as X-LDK-Instance.
pub async fn handshake(
    http: &reqwest::Client,
    ident: &Identity,
    client_id: String,
) -> Result<VSession, String> {
    let (hs, hello) = ClientHandshake::start(&ident.id, ident.secret.as_bytes(), None)
        .map_err(|e| e.to_string())?;
    let reply = post(
        http,
        format!("http://{}{PATH_HANDSHAKE}", ident.address),
        &[(HEADER_INSTANCE, &client_id)],
        hello,
    )
    .await?;
    let (keys, payload) = hs.finish(&reply).map_err(|e| e.to_string())?;
    if let Some(why) = payload.refused {
        return Err(why);
    }
    Ok(VSession {
        client_id,
        session: payload.session,
        keys,
        seq: AtomicU64::new(0),
        lease: std::sync::Mutex::new(None),
    })
}

impl VSession {
    /// One sealed request and its sealed answer; an error answer is Err.
    pub async fn call(
        &self,
        http: &reqwest::Client,
        address: &str,
        req: &Request,
    ) -> Result<Response, String> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let binding = Binding {
            method: "POST",
            path: PATH_REQUEST,
            instance: &self.client_id,
            session: &self.session,
        };
        let body = envelope::seal(
            &self.keys.c2s,
            Direction::ClientToServer,
            seq,
            &binding,
            &serde_json::to_vec(req).map_err(|e| e.to_string())?,
        );
        let reply = post(
            http,
            format!("http://{address}{PATH_REQUEST}"),
            &[
                (HEADER_INSTANCE, &self.client_id),
                (HEADER_SESSION, &self.session),
            ],
            body,
        )
        .await?;
        let (_, pt) = envelope::open(&self.keys.s2c, Direction::ServerToClient, &binding, &reply)
            .map_err(|e| e.to_string())?;
        match serde_json::from_slice(&pt).map_err(|e| e.to_string())? {
            Response::Error { message, .. } => Err(message),
            ok => Ok(ok),
        }
    }

    /// Checks out one seat of `feature` and remembers the lease.
    pub async fn login(
        &self,
        http: &reqwest::Client,
        address: &str,
        feature: &str,
        request_id: String,
    ) -> Result<(), String> {
        let req = Request::Login {
            feature: feature.into(),
            request_id,
            auth: AuthInfo::default(),
        };
        match self.call(http, address, &req).await? {
            Response::Granted { lease, .. } => {
                *self.lease.lock().expect("lock") = Some(lease);
                Ok(())
            }
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Renews the remembered lease; Err when it is no longer alive.
    pub async fn heartbeat(&self, http: &reqwest::Client, address: &str) -> Result<(), String> {
        let lease = self.lease.lock().expect("lock").clone().ok_or("no lease")?;
        match self
            .call(
                http,
                address,
                &Request::Heartbeat {
                    leases: vec![lease],
                },
            )
            .await?
        {
            Response::Heartbeat { leases } if leases.first().is_some_and(|l| l.alive) => Ok(()),
            other => Err(format!("lease not renewed: {other:?}")),
        }
    }
}
