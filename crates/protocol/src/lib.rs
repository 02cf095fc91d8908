//! The floatlm wire protocol, shared by server and client. Pure: no I/O.
//!
//! * [`handshake`]: Noise_NNpsk0_25519_AESGCM_SHA256 with a per-identity PSK,
//!   framed with the protocol version and the identity id; and resumption,
//!   the same exchange keyed by a ticket's resumption secret.
//! * [`keys`]: the key schedule (PSK derivation, per-direction session keys).
//! * [`envelope`]: one AES-256-GCM envelope per request and per response, with
//!   an explicit sequence number and AAD binding method, path and headers;
//!   and the replay window.
//! * [`messages`]: the JSON requests and responses inside envelopes.
//!
//! docs/protocol.md is the contract, byte by byte.

pub mod envelope;
pub mod handshake;
pub mod keys;
pub mod messages;
pub mod vectors;

/// The only protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// The Noise protocol name.
pub const NOISE_PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";

/// HTTP paths (all under the licensing listener).
pub const PATH_HANDSHAKE: &str = "/sentinel/ldk/v1/handshake";
pub const PATH_REQUEST: &str = "/sentinel/ldk/v1/request";
pub const PATH_RESUME: &str = "/sentinel/ldk/v1/resume";
pub const PATH_PING: &str = "/sentinel/ldk/v1/ping";
/// Request header: the client's own random id (proxies hash it for stickiness).
pub const HEADER_INSTANCE: &str = "x-ldk-instance";
/// Request header: the session id from the handshake, hex.
pub const HEADER_SESSION: &str = "x-ldk-session";

/// Everything that can go wrong in the protocol layer. Messages never carry
/// key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("message is malformed: {0}")]
    Malformed(&'static str),
    #[error("protocol version {0} is not supported; this side speaks version {VERSION}")]
    UnsupportedVersion(u8),
    #[error("authentication failed: unknown identity or wrong secret")]
    AuthFailed,
    #[error("envelope does not open: it was altered, replayed into another request, or sealed with other keys")]
    BadEnvelope,
    #[error("envelope sequence number {0} was already used or is too old (replay)")]
    Replay(u64),
    #[error("message is too large")]
    TooLarge,
}
