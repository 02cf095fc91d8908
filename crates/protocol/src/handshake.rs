//! The handshake: one round trip of Noise_NNpsk0_25519_AESGCM_SHA256.
//!
//! ```text
//! ClientHello = version:u8 | id_len:u8 | identity id (ASCII) | Noise message 1 (-> psk, e)
//! ServerHello = version:u8 | Noise message 2 (<- e, ee; payload = ServerHelloPayload JSON)
//! prologue    = "floatlm/1 " | identity id
//! ```
//!
//! Message 1 is encrypted under a key mixed from the PSK, so the server learns
//! the client knows it; message 2 depends on the PSK and both ephemerals, so
//! the client learns the server knows it. Ephemeral X25519 gives forward secrecy.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::{derive_psk, SessionKeys};
use crate::{ProtocolError, NOISE_PATTERN, VERSION};

/// Largest ClientHello or ServerHello accepted.
pub const MAX_HELLO: usize = 4096;
const MAX_NOISE: usize = 65535;

/// What the server tells the client inside the encrypted second message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHelloPayload {
    /// Session id, hex; goes in the X-LDK-Session header of every request.
    pub session: String,
    /// The instance that answered.
    pub instance: String,
    /// Lease time-to-live the server grants, milliseconds.
    pub lease_ttl_ms: u64,
    /// Set when the identity is known and the secret right, but the identity
    /// may not be used (revoked, expired): only the legitimate client reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

fn params() -> snow::params::NoiseParams {
    NOISE_PATTERN.parse().expect("valid Noise pattern name")
}

fn prologue(identity_id: &str) -> Vec<u8> {
    let mut p = b"floatlm/1 ".to_vec();
    p.extend_from_slice(identity_id.as_bytes());
    p
}

/// A Noise state for one side, keyed by the identity's PSK.
fn noise_state(
    identity_id: &str,
    secret: &[u8],
    ephemeral: Option<&[u8; 32]>,
    initiator: bool,
) -> Result<snow::HandshakeState, ProtocolError> {
    let psk = Zeroizing::new(derive_psk(secret, identity_id));
    let prologue = prologue(identity_id);
    let mut b = snow::Builder::new(params())
        .psk(0, psk.as_ref())
        .prologue(&prologue);
    if let Some(e) = ephemeral {
        b = b.fixed_ephemeral_key_for_testing_only(e);
    }
    let built = if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    };
    built.map_err(|_| ProtocolError::Malformed("noise setup"))
}

fn valid_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

/// Client side, between sending ClientHello and reading ServerHello.
pub struct ClientHandshake {
    state: snow::HandshakeState,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientHandshake")
    }
}

impl ClientHandshake {
    /// Starts a handshake; returns the state and the ClientHello bytes.
    /// `ephemeral` fixes the X25519 ephemeral key (test vectors only).
    pub fn start(
        identity_id: &str,
        secret: &[u8],
        ephemeral: Option<&[u8; 32]>,
    ) -> Result<(Self, Vec<u8>), ProtocolError> {
        if !valid_id(identity_id.as_bytes()) {
            return Err(ProtocolError::Malformed("identity id"));
        }
        let mut state = noise_state(identity_id, secret, ephemeral, true)?;
        let mut msg = vec![0u8; 256];
        let n = state
            .write_message(&[], &mut msg)
            .map_err(|_| ProtocolError::Malformed("noise write"))?;
        let mut out = Vec::with_capacity(2 + identity_id.len() + n);
        out.push(VERSION);
        out.push(identity_id.len() as u8);
        out.extend_from_slice(identity_id.as_bytes());
        out.extend_from_slice(&msg[..n]);
        Ok((ClientHandshake { state }, out))
    }

    /// Reads ServerHello; returns the session keys and the server's payload.
    pub fn finish(
        mut self,
        server_hello: &[u8],
    ) -> Result<(SessionKeys, ServerHelloPayload), ProtocolError> {
        if server_hello.len() > MAX_HELLO {
            return Err(ProtocolError::TooLarge);
        }
        let (&v, noise) = server_hello
            .split_first()
            .ok_or(ProtocolError::Malformed("empty"))?;
        if v != VERSION {
            return Err(ProtocolError::UnsupportedVersion(v));
        }
        let mut buf = vec![0u8; MAX_NOISE];
        let n = self
            .state
            .read_message(noise, &mut buf)
            .map_err(|_| ProtocolError::AuthFailed)?;
        let payload: ServerHelloPayload = serde_json::from_slice(&buf[..n])
            .map_err(|_| ProtocolError::Malformed("server hello payload"))?;
        let keys = split(&mut self.state)?;
        Ok((keys, payload))
    }
}

fn split(state: &mut snow::HandshakeState) -> Result<SessionKeys, ProtocolError> {
    if !state.is_handshake_finished() {
        return Err(ProtocolError::Malformed("handshake not finished"));
    }
    let h = state.get_handshake_hash().to_vec();
    let (k1, k2) = state.dangerously_get_raw_split();
    let (k1, k2) = (Zeroizing::new(k1), Zeroizing::new(k2));
    Ok(SessionKeys::derive(&k1, &k2, &h))
}

/// The parts of a ClientHello readable before any key is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello<'a> {
    pub identity_id: &'a str,
    noise: &'a [u8],
}

/// Parses the clear framing of a ClientHello.
pub fn parse_client_hello(bytes: &[u8]) -> Result<ClientHello<'_>, ProtocolError> {
    if bytes.len() > MAX_HELLO {
        return Err(ProtocolError::TooLarge);
    }
    let (&v, rest) = bytes
        .split_first()
        .ok_or(ProtocolError::Malformed("empty"))?;
    if v != VERSION {
        return Err(ProtocolError::UnsupportedVersion(v));
    }
    let (&len, rest) = rest
        .split_first()
        .ok_or(ProtocolError::Malformed("truncated"))?;
    let len = len as usize;
    if rest.len() < len + 32 {
        return Err(ProtocolError::Malformed("truncated"));
    }
    let (id, noise) = rest.split_at(len);
    if !valid_id(id) {
        return Err(ProtocolError::Malformed("identity id"));
    }
    Ok(ClientHello {
        identity_id: std::str::from_utf8(id)
            .map_err(|_| ProtocolError::Malformed("identity id"))?,
        noise,
    })
}

/// Server side of the handshake, given the identity's secret.
///
/// For an unknown identity the caller passes a dummy secret: the work done and
/// the error returned are the same as for a wrong secret.
pub fn respond(
    hello: &ClientHello<'_>,
    secret: &[u8],
    payload: &ServerHelloPayload,
    ephemeral: Option<&[u8; 32]>,
) -> Result<(SessionKeys, Vec<u8>), ProtocolError> {
    let mut state = noise_state(hello.identity_id, secret, ephemeral, false)?;
    let mut buf = vec![0u8; MAX_NOISE];
    state
        .read_message(hello.noise, &mut buf)
        .map_err(|_| ProtocolError::AuthFailed)?;
    let body = serde_json::to_vec(payload).map_err(|_| ProtocolError::Malformed("payload"))?;
    let mut msg = vec![0u8; body.len() + 128];
    let n = state
        .write_message(&body, &mut msg)
        .map_err(|_| ProtocolError::TooLarge)?;
    let keys = split(&mut state)?;
    let mut out = Vec::with_capacity(1 + n);
    out.push(VERSION);
    out.extend_from_slice(&msg[..n]);
    Ok((keys, out))
}
