//! The handshake: one round trip of Noise_NNpsk0_25519_AESGCM_SHA256.
//!
//! ```text
//! ClientHello = version:u8 | id_len:u8 | identity id (ASCII) | Noise message 1 (-> psk, e; 48 bytes)
//! ServerHello = version:u8 | Noise message 2 (<- e, ee; payload = ServerHelloPayload JSON)
//! prologue    = "floatlm/1 " | identity id
//!
//! ResumeHello = version:u8 | ticket_len:u16 BE | ticket | Noise message 1 (-> psk, e; 48 bytes)
//! prologue    = "floatlm/1 resume " | ticket
//! psk         = derive_resume_psk(resumption secret)
//! ```
//!
//! Resumption is the same one round trip with another PSK: the ticket (sealed
//! by the cluster, opaque to the client) names the identity and carries the
//! resumption secret the server handed out with the previous session. Any
//! instance that can open the ticket can continue; fresh ephemerals on both
//! sides make every resumed session's keys new, so nothing recorded from an
//! earlier session can be replayed into it.
//!
//! Message 1 is encrypted under a key mixed from the PSK, so the server learns
//! the client knows it; message 2 depends on the PSK and both ephemerals, so
//! the client learns the server knows it. Ephemeral X25519 gives forward secrecy.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::{derive_psk, derive_resume_psk, SessionKeys};
use crate::{ProtocolError, NOISE_PATTERN, VERSION};

/// Largest ClientHello, ResumeHello or ServerHello accepted.
pub const MAX_HELLO: usize = 4096;
/// Largest resumption ticket.
pub const MAX_TICKET: usize = 1024;
/// Length of a resumption secret, bytes.
pub const RESUMPTION_SECRET_LEN: usize = 32;
/// Length of Noise message 1 (`psk, e` with an empty payload): the 32-byte
/// ephemeral public key, then the 16-byte AES-GCM tag of the empty payload.
/// Any other length is malformed, so a message 1 carrying a payload is too.
pub const NOISE_MESSAGE_1_LEN: usize = 32 + 16;
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
    /// How to resume this session on any instance of the cluster. Servers
    /// of this version leave it out: the ticket comes with the session's
    /// first sealed response ([`crate::messages::SealedResponse`]), once the
    /// session proved to be live. Earlier servers sent it here; clients
    /// accept it in either place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<ResumeGrant>,
}

/// A resumption ticket and its secret, handed out with the first sealed
/// response of a session (by earlier servers: inside ServerHello).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeGrant {
    /// The ticket, hex; sent back verbatim in a ResumeHello.
    pub ticket: String,
    /// The resumption secret, hex (32 bytes); the PSK of the resumption.
    pub secret: String,
    /// Seconds the ticket stays valid (by the server's database clock).
    pub valid_for_s: u64,
}

impl std::fmt::Debug for ResumeGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumeGrant")
            .field("ticket_len", &(self.ticket.len() / 2))
            .field("secret", &"[redacted]")
            .field("valid_for_s", &self.valid_for_s)
            .finish()
    }
}

impl Drop for ResumeGrant {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

fn params() -> snow::params::NoiseParams {
    NOISE_PATTERN.parse().expect("valid Noise pattern name")
}

fn prologue(identity_id: &str) -> Vec<u8> {
    let mut p = b"floatlm/1 ".to_vec();
    p.extend_from_slice(identity_id.as_bytes());
    p
}

fn resume_prologue(ticket: &[u8]) -> Vec<u8> {
    let mut p = b"floatlm/1 resume ".to_vec();
    p.extend_from_slice(ticket);
    p
}

/// A Noise state for one side, keyed by `psk` and bound to `prologue`.
fn noise_state(
    psk: &[u8; 32],
    prologue: &[u8],
    ephemeral: Option<&[u8; 32]>,
    initiator: bool,
) -> Result<snow::HandshakeState, ProtocolError> {
    let mut b = snow::Builder::new(params()).psk(0, psk).prologue(prologue);
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

fn identity_state(
    identity_id: &str,
    secret: &[u8],
    ephemeral: Option<&[u8; 32]>,
    initiator: bool,
) -> Result<snow::HandshakeState, ProtocolError> {
    let psk = Zeroizing::new(derive_psk(secret, identity_id));
    noise_state(&psk, &prologue(identity_id), ephemeral, initiator)
}

fn resume_state(
    ticket: &[u8],
    secret: &[u8],
    ephemeral: Option<&[u8; 32]>,
    initiator: bool,
) -> Result<snow::HandshakeState, ProtocolError> {
    let psk = Zeroizing::new(derive_resume_psk(secret));
    noise_state(&psk, &resume_prologue(ticket), ephemeral, initiator)
}

/// Writes Noise message 1 after `header`.
fn first_message(
    state: &mut snow::HandshakeState,
    mut header: Vec<u8>,
) -> Result<Vec<u8>, ProtocolError> {
    let mut msg = vec![0u8; 256];
    let n = state
        .write_message(&[], &mut msg)
        .map_err(|_| ProtocolError::Malformed("noise write"))?;
    header.extend_from_slice(&msg[..n]);
    Ok(header)
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
        let mut state = identity_state(identity_id, secret, ephemeral, true)?;
        let mut header = Vec::with_capacity(2 + identity_id.len() + 48);
        header.push(VERSION);
        header.push(identity_id.len() as u8);
        header.extend_from_slice(identity_id.as_bytes());
        let out = first_message(&mut state, header)?;
        Ok((ClientHandshake { state }, out))
    }

    /// Starts a resumption with a ticket and its secret from an earlier
    /// ServerHello; returns the state and the ResumeHello bytes. The answer
    /// is an ordinary ServerHello, read with [`ClientHandshake::finish`].
    pub fn resume(
        ticket: &[u8],
        secret: &[u8],
        ephemeral: Option<&[u8; 32]>,
    ) -> Result<(Self, Vec<u8>), ProtocolError> {
        if ticket.is_empty() || ticket.len() > MAX_TICKET {
            return Err(ProtocolError::Malformed("ticket length"));
        }
        if secret.len() != RESUMPTION_SECRET_LEN {
            return Err(ProtocolError::Malformed("resumption secret length"));
        }
        let mut state = resume_state(ticket, secret, ephemeral, true)?;
        let mut header = Vec::with_capacity(3 + ticket.len() + 48);
        header.push(VERSION);
        header.extend_from_slice(&(ticket.len() as u16).to_be_bytes());
        header.extend_from_slice(ticket);
        let out = first_message(&mut state, header)?;
        Ok((ClientHandshake { state }, out))
    }

    /// Reads ServerHello; returns the session keys and the server's payload.
    pub fn finish(
        self,
        server_hello: &[u8],
    ) -> Result<(SessionKeys, ServerHelloPayload), ProtocolError> {
        self.finish_transcript(server_hello)
            .map(|(keys, payload, _)| (keys, payload))
    }

    /// [`ClientHandshake::finish`], also returning the intermediate values
    /// the test vectors show (crate-private: they are key material).
    pub(crate) fn finish_transcript(
        mut self,
        server_hello: &[u8],
    ) -> Result<(SessionKeys, ServerHelloPayload, Transcript), ProtocolError> {
        let noise = versioned(server_hello)?;
        // The payload may carry a resumption secret: wiped after parsing.
        let mut buf = Zeroizing::new(vec![0u8; MAX_NOISE]);
        let n = self
            .state
            .read_message(noise, &mut buf)
            .map_err(|_| ProtocolError::AuthFailed)?;
        let payload: ServerHelloPayload = serde_json::from_slice(&buf[..n])
            .map_err(|_| ProtocolError::Malformed("server hello payload"))?;
        let transcript = split(&mut self.state)?;
        Ok((transcript.keys(), payload, transcript))
    }
}

/// What Noise leaves after message 2: the handshake hash and the two raw
/// keys of Split(), from which [`SessionKeys`] are derived.
pub(crate) struct Transcript {
    pub(crate) handshake_hash: Vec<u8>,
    pub(crate) k1: Zeroizing<[u8; 32]>,
    pub(crate) k2: Zeroizing<[u8; 32]>,
}

impl Transcript {
    fn keys(&self) -> SessionKeys {
        SessionKeys::derive(&self.k1, &self.k2, &self.handshake_hash)
    }
}

fn split(state: &mut snow::HandshakeState) -> Result<Transcript, ProtocolError> {
    if !state.is_handshake_finished() {
        return Err(ProtocolError::Malformed("handshake not finished"));
    }
    let handshake_hash = state.get_handshake_hash().to_vec();
    let (k1, k2) = state.dangerously_get_raw_split();
    Ok(Transcript {
        handshake_hash,
        k1: Zeroizing::new(k1),
        k2: Zeroizing::new(k2),
    })
}

/// Noise message 1 must be exactly [`NOISE_MESSAGE_1_LEN`] bytes.
fn message_1(noise: &[u8]) -> Result<&[u8], ProtocolError> {
    if noise.len() < NOISE_MESSAGE_1_LEN {
        return Err(ProtocolError::Malformed("truncated"));
    }
    if noise.len() > NOISE_MESSAGE_1_LEN {
        return Err(ProtocolError::Malformed(
            "Noise message 1 carries a payload; it must be empty",
        ));
    }
    Ok(noise)
}

/// Checks the size bound and the version byte of a hello; the rest.
fn versioned(bytes: &[u8]) -> Result<&[u8], ProtocolError> {
    if bytes.len() > MAX_HELLO {
        return Err(ProtocolError::TooLarge);
    }
    let (&v, rest) = bytes
        .split_first()
        .ok_or(ProtocolError::Malformed("empty"))?;
    if v != VERSION {
        return Err(ProtocolError::UnsupportedVersion(v));
    }
    Ok(rest)
}

/// The parts of a ClientHello readable before any key is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello<'a> {
    pub identity_id: &'a str,
    noise: &'a [u8],
}

/// Parses the clear framing of a ClientHello.
pub fn parse_client_hello(bytes: &[u8]) -> Result<ClientHello<'_>, ProtocolError> {
    let rest = versioned(bytes)?;
    let (&len, rest) = rest
        .split_first()
        .ok_or(ProtocolError::Malformed("truncated"))?;
    let len = len as usize;
    if rest.len() < len {
        return Err(ProtocolError::Malformed("truncated"));
    }
    let (id, noise) = rest.split_at(len);
    if !valid_id(id) {
        return Err(ProtocolError::Malformed("identity id"));
    }
    Ok(ClientHello {
        identity_id: std::str::from_utf8(id)
            .map_err(|_| ProtocolError::Malformed("identity id"))?,
        noise: message_1(noise)?,
    })
}

/// The parts of a ResumeHello readable before any key is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeHello<'a> {
    /// The ticket as the client sent it (opened by the server).
    pub ticket: &'a [u8],
    noise: &'a [u8],
}

/// Parses the clear framing of a ResumeHello.
pub fn parse_resume_hello(bytes: &[u8]) -> Result<ResumeHello<'_>, ProtocolError> {
    let rest = versioned(bytes)?;
    if rest.len() < 2 {
        return Err(ProtocolError::Malformed("truncated"));
    }
    let (len, rest) = rest.split_at(2);
    let len = u16::from_be_bytes([len[0], len[1]]) as usize;
    if len == 0 || len > MAX_TICKET {
        return Err(ProtocolError::Malformed("ticket length"));
    }
    if rest.len() < len {
        return Err(ProtocolError::Malformed("truncated"));
    }
    let (ticket, noise) = rest.split_at(len);
    Ok(ResumeHello {
        ticket,
        noise: message_1(noise)?,
    })
}

/// Reads message 1 and writes the ServerHello carrying `payload`.
fn answer(
    mut state: snow::HandshakeState,
    noise: &[u8],
    payload: &ServerHelloPayload,
) -> Result<(SessionKeys, Vec<u8>), ProtocolError> {
    let mut buf = vec![0u8; MAX_NOISE];
    let n = state
        .read_message(message_1(noise)?, &mut buf)
        .map_err(|_| ProtocolError::AuthFailed)?;
    if n != 0 {
        // Unreachable after the length check; kept so no payload is ever
        // accepted, whatever the framing above turns into.
        return Err(ProtocolError::Malformed(
            "Noise message 1 carries a payload; it must be empty",
        ));
    }
    let body = Zeroizing::new(
        serde_json::to_vec(payload).map_err(|_| ProtocolError::Malformed("payload"))?,
    );
    let mut msg = vec![0u8; body.len() + 128];
    let n = state
        .write_message(&body, &mut msg)
        .map_err(|_| ProtocolError::TooLarge)?;
    let keys = split(&mut state)?.keys();
    let mut out = Vec::with_capacity(1 + n);
    out.push(VERSION);
    out.extend_from_slice(&msg[..n]);
    Ok((keys, out))
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
    let state = identity_state(hello.identity_id, secret, ephemeral, false)?;
    answer(state, hello.noise, payload)
}

/// Server side of a resumption, given the secret found in the opened ticket.
pub fn respond_resume(
    hello: &ResumeHello<'_>,
    secret: &[u8],
    payload: &ServerHelloPayload,
    ephemeral: Option<&[u8; 32]>,
) -> Result<(SessionKeys, Vec<u8>), ProtocolError> {
    let state = resume_state(hello.ticket, secret, ephemeral, false)?;
    answer(state, hello.noise, payload)
}
