//! Test vectors: fixed secret, identity and ephemerals, and everything they
//! produce, step by step. The `gen_vectors` example writes them to
//! tests/vectors/v1.json; the protocol crate, the server and the client
//! check them, and `tests/vectors_from_primitives.rs` rebuilds every
//! message from the file alone, without this crate or snow.
//!
//! Every input and every intermediate value is in the file under a name that
//! says what it is (docs/protocol.md, *Test vectors*): nothing a new
//! implementation needs is a constant hidden in this module.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, Binding, Direction};
use crate::handshake::{self, ClientHandshake, ResumeGrant, ServerHelloPayload};
use crate::keys::{derive_psk, derive_resume_psk, SessionKeys};
use crate::messages::{FeatureInfo, Response, SealedResponse};

pub const IDENTITY_ID: &str = "00112233aabbccdd";
pub const SECRET: &str = "floatlm-test-vector-secret-0123456789";
/// X25519 private scalars (clamped by X25519 itself, as RFC 7748 says).
pub const CLIENT_EPHEMERAL: [u8; 32] = [0x11; 32];
pub const SERVER_EPHEMERAL: [u8; 32] = [0x22; 32];
/// A stand-in ticket: the client treats tickets as opaque bytes.
pub const RESUME_TICKET: &[u8] = b"floatlm-test-vector-ticket";
pub const RESUME_SECRET: [u8; 32] = [0x33; 32];
pub const REQUEST_JSON: &str = r#"{"op":"info","features":["demo"]}"#;
pub const RESPONSE_JSON: &str =
    r#"{"result":"info","features":[{"name":"demo","total":5,"used":1,"free":4}]}"#;
/// `mine`: the leases of the session's identity.
pub const MINE_REQUEST_JSON: &str = r#"{"op":"mine"}"#;
/// Its answer: one lease, by its seat reference (not the lease id).
pub const MINE_RESPONSE_JSON: &str = r#"{"result":"mine","leases":[{"lease":"3.0.17.0e73df14bf5e1035","feature":"demo","user":"alice","host":"ws-12","since_ms":1767225600000,"promise_end_ms":1767225720000}]}"#;
/// `release` of that lease by its seat reference, from another session.
pub const RELEASE_REQUEST_JSON: &str = r#"{"op":"release","lease":"3.0.17.0e73df14bf5e1035"}"#;
/// Its answer: released; the seat is free once the holder's promise ran out.
pub const RELEASE_RESPONSE_JSON: &str = r#"{"result":"seat_released","lease":"3.0.17.0e73df14bf5e1035","released":true,"free_at_ms":1767225665000}"#;
/// The X-LDK-Instance value of the vector client.
pub const CLIENT_INSTANCE: &str = "client-vector";
/// The session the vector handshake opens, and the one the resumption opens.
pub const SESSION: &str = "0123456789abcdef0123456789abcdef";
pub const RESUMED_SESSION: &str = "fedcba9876543210fedcba9876543210";

const ABOUT: &str = "floatlm protocol version 1 test vectors; docs/protocol.md ('Test vectors') \
explains every field. Byte strings are lower-case hex; fields ending in _text are UTF-8 text, \
used as the bytes of that text; numbers are JSON numbers. *_private fields are X25519 private \
scalars as given to X25519 (RFC 7748 clamps them); *_public fields are X25519(private, 9). \
The resumption runs with the same ephemeral private scalars as the handshake (listed again).";

pub fn server_payload() -> ServerHelloPayload {
    ServerHelloPayload {
        session: SESSION.into(),
        instance: "i-vector".into(),
        lease_ttl_ms: 60_000,
        refused: None,
        resume: None,
    }
}

/// The payload answering the vector resumption. It carries a ticket in the
/// ServerHello, as servers before 0.2 did: clients must accept a ticket
/// there as well as in the first sealed response.
pub fn resume_payload() -> ServerHelloPayload {
    ServerHelloPayload {
        session: RESUMED_SESSION.into(),
        resume: Some(ResumeGrant {
            ticket: hex::encode(b"floatlm-test-vector-ticket-2"),
            secret: hex::encode([0x44; 32]),
            valid_for_s: 86_400,
        }),
        ..server_payload()
    }
}

pub fn binding() -> Binding<'static> {
    Binding {
        method: "POST",
        path: crate::PATH_REQUEST,
        instance: CLIENT_INSTANCE,
        session: SESSION,
    }
}

/// The vectors file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vectors {
    pub about: String,
    pub handshake: HandshakeVector,
    pub resume: ResumeVector,
    pub envelopes: Vec<EnvelopeVector>,
}

/// `POST /sentinel/ldk/v1/handshake`, in the order a client computes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeVector {
    pub noise_protocol: String,
    pub identity_id: String,
    pub secret_text: String,
    pub psk: String,
    pub prologue: String,
    pub client_ephemeral_private: String,
    pub client_ephemeral_public: String,
    pub noise_message_1: String,
    pub client_hello: String,
    pub server_ephemeral_private: String,
    pub server_ephemeral_public: String,
    pub server_hello_payload_text: String,
    pub noise_message_2: String,
    pub server_hello: String,
    pub handshake_hash: String,
    pub split_k1: String,
    pub split_k2: String,
    pub c2s_key: String,
    pub s2c_key: String,
}

/// `POST /sentinel/ldk/v1/resume`, in the order a client computes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeVector {
    pub noise_protocol: String,
    pub ticket: String,
    pub resumption_secret: String,
    pub psk: String,
    pub prologue: String,
    pub client_ephemeral_private: String,
    pub client_ephemeral_public: String,
    pub noise_message_1: String,
    pub resume_hello: String,
    pub server_ephemeral_private: String,
    pub server_ephemeral_public: String,
    pub server_hello_payload_text: String,
    pub noise_message_2: String,
    pub server_hello: String,
    pub handshake_hash: String,
    pub split_k1: String,
    pub split_k2: String,
    pub c2s_key: String,
    pub s2c_key: String,
}

/// One envelope with everything that went into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeVector {
    pub name: String,
    /// 1 = request (client to server), 2 = response.
    pub direction: u8,
    /// The AES-256-GCM key: c2s for requests, s2c for responses.
    pub key: String,
    pub seq: u64,
    pub method: String,
    pub path: String,
    /// The X-LDK-Instance header value ("" when the header is absent).
    pub instance_text: String,
    /// The X-LDK-Session header value: the session id as its hex text.
    pub session_text: String,
    pub nonce: String,
    pub aad: String,
    pub plaintext_text: String,
    pub envelope: String,
}

/// What one run of the Noise exchange shows.
struct Run {
    hello: Vec<u8>,
    message_1_at: usize,
    payload_text: String,
    server_hello: Vec<u8>,
    transcript: handshake::Transcript,
    keys: SessionKeys,
}

fn public(noise_message: &[u8]) -> String {
    // Both messages start with the sender's ephemeral public key.
    hex::encode(&noise_message[..32])
}

fn handshake_run() -> Run {
    let (client, hello) =
        ClientHandshake::start(IDENTITY_ID, SECRET.as_bytes(), Some(&CLIENT_EPHEMERAL)).unwrap();
    let parsed = handshake::parse_client_hello(&hello).unwrap();
    let (server_keys, server_hello) = handshake::respond(
        &parsed,
        SECRET.as_bytes(),
        &server_payload(),
        Some(&SERVER_EPHEMERAL),
    )
    .unwrap();
    let (keys, payload, transcript) = client.finish_transcript(&server_hello).unwrap();
    assert_eq!(keys, server_keys);
    assert_eq!(payload, server_payload());
    Run {
        message_1_at: 2 + IDENTITY_ID.len(),
        hello,
        payload_text: serde_json::to_string(&server_payload()).unwrap(),
        server_hello,
        transcript,
        keys,
    }
}

fn resume_run() -> Run {
    let (client, hello) =
        ClientHandshake::resume(RESUME_TICKET, &RESUME_SECRET, Some(&CLIENT_EPHEMERAL)).unwrap();
    let parsed = handshake::parse_resume_hello(&hello).unwrap();
    let (server_keys, server_hello) = handshake::respond_resume(
        &parsed,
        &RESUME_SECRET,
        &resume_payload(),
        Some(&SERVER_EPHEMERAL),
    )
    .unwrap();
    let (keys, payload, transcript) = client.finish_transcript(&server_hello).unwrap();
    assert_eq!(keys, server_keys);
    assert_eq!(payload, resume_payload());
    Run {
        message_1_at: 3 + RESUME_TICKET.len(),
        hello,
        payload_text: serde_json::to_string(&resume_payload()).unwrap(),
        server_hello,
        transcript,
        keys,
    }
}

fn envelope(
    name: &str,
    keys: &SessionKeys,
    dir: Direction,
    seq: u64,
    b: &Binding<'_>,
    plaintext: &str,
) -> EnvelopeVector {
    let key = match dir {
        Direction::ClientToServer => &keys.c2s,
        Direction::ServerToClient => &keys.s2c,
    };
    EnvelopeVector {
        name: name.into(),
        direction: dir as u8,
        key: hex::encode(key),
        seq,
        method: b.method.into(),
        path: b.path.into(),
        instance_text: b.instance.into(),
        session_text: b.session.into(),
        nonce: hex::encode(envelope::nonce(dir, seq)),
        aad: hex::encode(envelope::aad(b, dir, seq)),
        plaintext_text: plaintext.into(),
        envelope: hex::encode(envelope::seal(key, dir, seq, b, plaintext.as_bytes())),
    }
}

/// The first sealed response of the vector session: it hands out the
/// ticket and resumption secret that the resume vector then uses.
fn first_response_json() -> String {
    serde_json::to_string(&SealedResponse {
        response: Response::Info {
            features: vec![FeatureInfo {
                name: "demo".into(),
                total: 5,
                used: 0,
                free: 5,
            }],
        },
        resume: Some(ResumeGrant {
            ticket: hex::encode(RESUME_TICKET),
            secret: hex::encode(RESUME_SECRET),
            valid_for_s: 86_400,
        }),
    })
    .unwrap()
}

/// Computes the vectors from the fixed inputs.
pub fn compute() -> Vectors {
    let h = handshake_run();
    let r = resume_run();
    let m1 = &h.hello[h.message_1_at..];
    let m2 = &h.server_hello[1..];
    let rm1 = &r.hello[r.message_1_at..];
    let rm2 = &r.server_hello[1..];
    let b = binding();
    let no_instance = Binding { instance: "", ..b };
    let resumed = Binding {
        session: RESUMED_SESSION,
        ..b
    };
    let (c2s, s2c) = (Direction::ClientToServer, Direction::ServerToClient);
    let mut prologue = b"floatlm/1 ".to_vec();
    prologue.extend_from_slice(IDENTITY_ID.as_bytes());
    let mut resume_prologue = b"floatlm/1 resume ".to_vec();
    resume_prologue.extend_from_slice(RESUME_TICKET);
    Vectors {
        about: ABOUT.into(),
        handshake: HandshakeVector {
            noise_protocol: crate::NOISE_PATTERN.into(),
            identity_id: IDENTITY_ID.into(),
            secret_text: SECRET.into(),
            psk: hex::encode(derive_psk(SECRET.as_bytes(), IDENTITY_ID)),
            prologue: hex::encode(prologue),
            client_ephemeral_private: hex::encode(CLIENT_EPHEMERAL),
            client_ephemeral_public: public(m1),
            noise_message_1: hex::encode(m1),
            client_hello: hex::encode(&h.hello),
            server_ephemeral_private: hex::encode(SERVER_EPHEMERAL),
            server_ephemeral_public: public(m2),
            server_hello_payload_text: h.payload_text.clone(),
            noise_message_2: hex::encode(m2),
            server_hello: hex::encode(&h.server_hello),
            handshake_hash: hex::encode(&h.transcript.handshake_hash),
            split_k1: hex::encode(*h.transcript.k1),
            split_k2: hex::encode(*h.transcript.k2),
            c2s_key: hex::encode(h.keys.c2s),
            s2c_key: hex::encode(h.keys.s2c),
        },
        resume: ResumeVector {
            noise_protocol: crate::NOISE_PATTERN.into(),
            ticket: hex::encode(RESUME_TICKET),
            resumption_secret: hex::encode(RESUME_SECRET),
            psk: hex::encode(derive_resume_psk(&RESUME_SECRET)),
            prologue: hex::encode(resume_prologue),
            client_ephemeral_private: hex::encode(CLIENT_EPHEMERAL),
            client_ephemeral_public: public(rm1),
            noise_message_1: hex::encode(rm1),
            resume_hello: hex::encode(&r.hello),
            server_ephemeral_private: hex::encode(SERVER_EPHEMERAL),
            server_ephemeral_public: public(rm2),
            server_hello_payload_text: r.payload_text.clone(),
            noise_message_2: hex::encode(rm2),
            server_hello: hex::encode(&r.server_hello),
            handshake_hash: hex::encode(&r.transcript.handshake_hash),
            split_k1: hex::encode(*r.transcript.k1),
            split_k2: hex::encode(*r.transcript.k2),
            c2s_key: hex::encode(r.keys.c2s),
            s2c_key: hex::encode(r.keys.s2c),
        },
        envelopes: vec![
            envelope("request", &h.keys, c2s, 5, &b, REQUEST_JSON),
            envelope("response", &h.keys, s2c, 5, &b, RESPONSE_JSON),
            envelope(
                "request_without_instance_header",
                &h.keys,
                c2s,
                6,
                &no_instance,
                REQUEST_JSON,
            ),
            envelope(
                "first_response_with_ticket",
                &h.keys,
                s2c,
                0,
                &b,
                &first_response_json(),
            ),
            envelope(
                "resumed_request",
                &r.keys,
                c2s,
                0,
                &resumed,
                r#"{"op":"heartbeat","leases":["3.0.17.5c1e2a9b0d4f7163"]}"#,
            ),
            envelope("mine_request", &h.keys, c2s, 7, &b, MINE_REQUEST_JSON),
            envelope("mine_response", &h.keys, s2c, 7, &b, MINE_RESPONSE_JSON),
            envelope("release_request", &h.keys, c2s, 8, &b, RELEASE_REQUEST_JSON),
            envelope(
                "release_response",
                &h.keys,
                s2c,
                8,
                &b,
                RELEASE_RESPONSE_JSON,
            ),
        ],
    }
}

/// The shipped vectors file.
pub const V1_JSON: &str = include_str!("../../../tests/vectors/v1.json");

pub fn shipped() -> Vectors {
    serde_json::from_str(V1_JSON).expect("tests/vectors/v1.json parses")
}

impl Vectors {
    /// The envelope vector called `name`.
    pub fn envelope(&self, name: &str) -> &EnvelopeVector {
        self.envelopes
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no envelope vector named {name}"))
    }
}
