//! Test vectors: fixed secret, identity and ephemerals, and what they produce.
//! `cargo run -p floatlm-protocol --example gen_vectors > tests/vectors/v1.json`
//! writes them; the protocol crate, the server and the client check them.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, Binding, Direction};
use crate::handshake::{self, ClientHandshake, ServerHelloPayload};
use crate::keys::{derive_psk, derive_resume_psk};

pub const IDENTITY_ID: &str = "00112233aabbccdd";
pub const SECRET: &str = "floatlm-test-vector-secret-0123456789";
pub const CLIENT_EPHEMERAL: [u8; 32] = [0x11; 32];
pub const SERVER_EPHEMERAL: [u8; 32] = [0x22; 32];
/// A stand-in ticket: the client treats tickets as opaque bytes.
pub const RESUME_TICKET: &[u8] = b"floatlm-test-vector-ticket";
pub const RESUME_SECRET: [u8; 32] = [0x33; 32];
pub const REQUEST_JSON: &str = r#"{"op":"info","features":["demo"]}"#;
pub const RESPONSE_JSON: &str =
    r#"{"result":"info","features":[{"name":"demo","total":5,"used":1,"free":4}]}"#;

pub fn server_payload() -> ServerHelloPayload {
    ServerHelloPayload {
        session: "0123456789abcdef0123456789abcdef".into(),
        instance: "i-vector".into(),
        lease_ttl_ms: 60_000,
        refused: None,
        resume: None,
    }
}

/// The payload answering the vector resumption: a fresh ticket for next time.
pub fn resume_payload() -> ServerHelloPayload {
    ServerHelloPayload {
        session: "fedcba9876543210fedcba9876543210".into(),
        resume: Some(handshake::ResumeGrant {
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
        instance: "client-vector",
        session: "0123456789abcdef0123456789abcdef",
    }
}

/// The vectors file, all byte strings hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vectors {
    pub identity_id: String,
    pub secret: String,
    pub client_ephemeral: String,
    pub server_ephemeral: String,
    pub psk: String,
    pub client_hello: String,
    pub server_hello: String,
    pub c2s_key: String,
    pub s2c_key: String,
    pub request_seq: u64,
    pub request_plaintext: String,
    pub request_envelope: String,
    pub response_plaintext: String,
    pub response_envelope: String,
    pub resume_ticket: String,
    pub resume_secret: String,
    pub resume_psk: String,
    pub resume_hello: String,
    pub resume_server_hello: String,
    pub resume_c2s_key: String,
    pub resume_s2c_key: String,
}

/// Computes the vectors from the fixed inputs.
pub fn compute() -> Vectors {
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
    let (keys, payload) = client.finish(&server_hello).unwrap();
    assert_eq!(keys, server_keys);
    assert_eq!(payload, server_payload());
    let b = binding();
    let (client, resume_hello) =
        ClientHandshake::resume(RESUME_TICKET, &RESUME_SECRET, Some(&CLIENT_EPHEMERAL)).unwrap();
    let parsed = handshake::parse_resume_hello(&resume_hello).unwrap();
    let (server_resumed, resume_server_hello) = handshake::respond_resume(
        &parsed,
        &RESUME_SECRET,
        &resume_payload(),
        Some(&SERVER_EPHEMERAL),
    )
    .unwrap();
    let (resumed, payload) = client.finish(&resume_server_hello).unwrap();
    assert_eq!(resumed, server_resumed);
    assert_eq!(payload, resume_payload());
    Vectors {
        identity_id: IDENTITY_ID.into(),
        secret: SECRET.into(),
        client_ephemeral: hex::encode(CLIENT_EPHEMERAL),
        server_ephemeral: hex::encode(SERVER_EPHEMERAL),
        psk: hex::encode(derive_psk(SECRET.as_bytes(), IDENTITY_ID)),
        client_hello: hex::encode(&hello),
        server_hello: hex::encode(&server_hello),
        c2s_key: hex::encode(keys.c2s),
        s2c_key: hex::encode(keys.s2c),
        request_seq: 5,
        request_plaintext: REQUEST_JSON.into(),
        request_envelope: hex::encode(envelope::seal(
            &keys.c2s,
            Direction::ClientToServer,
            5,
            &b,
            REQUEST_JSON.as_bytes(),
        )),
        response_plaintext: RESPONSE_JSON.into(),
        response_envelope: hex::encode(envelope::seal(
            &keys.s2c,
            Direction::ServerToClient,
            5,
            &b,
            RESPONSE_JSON.as_bytes(),
        )),
        resume_ticket: hex::encode(RESUME_TICKET),
        resume_secret: hex::encode(RESUME_SECRET),
        resume_psk: hex::encode(derive_resume_psk(&RESUME_SECRET)),
        resume_hello: hex::encode(&resume_hello),
        resume_server_hello: hex::encode(&resume_server_hello),
        resume_c2s_key: hex::encode(resumed.c2s),
        resume_s2c_key: hex::encode(resumed.s2c),
    }
}

/// The shipped vectors file.
pub const V1_JSON: &str = include_str!("../../../tests/vectors/v1.json");

pub fn shipped() -> Vectors {
    serde_json::from_str(V1_JSON).expect("tests/vectors/v1.json parses")
}
