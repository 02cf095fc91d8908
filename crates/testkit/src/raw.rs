//! A protocol session spoken by hand, for requests the client library would
//! never send (hostile strings, odd headers) and for reading answers as sent.

use floatlm_protocol::envelope::{self, Binding, Direction};
use floatlm_protocol::handshake::ClientHandshake;
use floatlm_protocol::keys::SessionKeys;
use floatlm_protocol::messages::{Request, Response};
use floatlm_protocol::{HEADER_INSTANCE, HEADER_SESSION, PATH_HANDSHAKE, PATH_REQUEST};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Raw {
    http: reqwest::Client,
    addr: String,
    pub session: String,
    keys: SessionKeys,
    seq: AtomicU64,
}

/// What a request got: the HTTP status, and the opened answer when it was
/// sealed, or the plain JSON error otherwise.
#[derive(Debug)]
pub enum Answer {
    Sealed(Response),
    Plain(u16, serde_json::Value),
}

impl Raw {
    /// Handshakes with `addr` as `identity` (`ID:SECRET@…`).
    pub async fn connect(addr: &str, identity: &str) -> Raw {
        let (id, secret) = identity.split_once('@').unwrap().0.split_once(':').unwrap();
        let (hs, hello) = ClientHandshake::start(id, secret.as_bytes(), None).unwrap();
        let http = reqwest::Client::new();
        let reply = http
            .post(format!("http://{addr}{PATH_HANDSHAKE}"))
            .body(hello)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
        let (keys, payload) = hs.finish(&reply.bytes().await.unwrap()).unwrap();
        Raw {
            http,
            addr: addr.into(),
            session: payload.session,
            keys,
            seq: AtomicU64::new(0),
        }
    }

    /// Handshakes with `addr` as `identity`, sending X-LDK-Instance
    /// `instance` (a proxy hashes it): the session and the instance that
    /// answered, or the status and plain JSON error of a refusal.
    pub async fn connect_as(
        addr: &str,
        identity: &str,
        instance: &str,
    ) -> Result<(Raw, String), (u16, serde_json::Value)> {
        let (id, secret) = identity.split_once('@').unwrap().0.split_once(':').unwrap();
        let (hs, hello) = ClientHandshake::start(id, secret.as_bytes(), None).unwrap();
        let http = reqwest::Client::new();
        let reply = http
            .post(format!("http://{addr}{PATH_HANDSHAKE}"))
            .header(HEADER_INSTANCE, instance)
            .body(hello)
            .send()
            .await
            .unwrap();
        let status = reply.status().as_u16();
        let bytes = reply.bytes().await.unwrap();
        if status != 200 {
            return Err((
                status,
                serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            ));
        }
        let (keys, payload) = hs.finish(&bytes).unwrap();
        let raw = Raw {
            http,
            addr: addr.into(),
            session: payload.session,
            keys,
            seq: AtomicU64::new(0),
        };
        Ok((raw, payload.instance))
    }

    /// Sends `req` with X-LDK-Instance `instance`.
    pub async fn call(&self, instance: &str, req: &Request) -> Answer {
        self.call_json(instance, &serde_json::to_vec(req).unwrap())
            .await
    }

    /// Sends `json` (any bytes) sealed, with X-LDK-Instance `instance`.
    async fn call_json(&self, instance: &str, json: &[u8]) -> Answer {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let b = Binding {
            method: "POST",
            path: PATH_REQUEST,
            instance,
            session: &self.session,
        };
        let body = envelope::seal(&self.keys.c2s, Direction::ClientToServer, seq, &b, json);
        let r = self
            .http
            .post(format!("http://{}{PATH_REQUEST}", self.addr))
            .header(HEADER_SESSION, &self.session)
            .header(HEADER_INSTANCE, instance)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        if status != 200 {
            return Answer::Plain(status, serde_json::from_slice(&bytes).unwrap());
        }
        let (_, pt) = envelope::open(&self.keys.s2c, Direction::ServerToClient, &b, &bytes)
            .expect("the answer opens");
        Answer::Sealed(serde_json::from_slice(&pt).unwrap())
    }
}
