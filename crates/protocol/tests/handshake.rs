//! Handshake and vectors: the protocol crate's side of the contract.

use floatlm_protocol::envelope::{self, Direction};
use floatlm_protocol::handshake::{parse_client_hello, respond, ClientHandshake};
use floatlm_protocol::vectors::{self, server_payload, IDENTITY_ID, SECRET};
use floatlm_protocol::ProtocolError;

#[test]
fn shipped_vectors_match() {
    assert_eq!(vectors::compute(), vectors::shipped(), "regenerate with: cargo run -p floatlm-protocol --example gen_vectors > tests/vectors/v1.json (and say why in docs/protocol.md)");
}

#[test]
fn vector_envelopes_open() {
    let v = vectors::shipped();
    let c2s: [u8; 32] = hex::decode(&v.c2s_key).unwrap().try_into().unwrap();
    let s2c: [u8; 32] = hex::decode(&v.s2c_key).unwrap().try_into().unwrap();
    let b = vectors::binding();
    let (seq, pt) = envelope::open(
        &c2s,
        Direction::ClientToServer,
        &b,
        &hex::decode(&v.request_envelope).unwrap(),
    )
    .unwrap();
    assert_eq!((seq, pt), (v.request_seq, v.request_plaintext.into_bytes()));
    let (seq, pt) = envelope::open(
        &s2c,
        Direction::ServerToClient,
        &b,
        &hex::decode(&v.response_envelope).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (seq, pt),
        (v.request_seq, v.response_plaintext.into_bytes())
    );
}

#[test]
fn wrong_secret_fails_on_both_sides() {
    let (_, hello) = ClientHandshake::start(IDENTITY_ID, b"not the secret", None).unwrap();
    let parsed = parse_client_hello(&hello).unwrap();
    assert_eq!(
        respond(&parsed, SECRET.as_bytes(), &server_payload(), None).unwrap_err(),
        ProtocolError::AuthFailed
    );
    // A server that does not know the secret cannot answer acceptably either.
    let (client, hello) = ClientHandshake::start(IDENTITY_ID, SECRET.as_bytes(), None).unwrap();
    let parsed = parse_client_hello(&hello).unwrap();
    let (_, reply) = respond(&parsed, SECRET.as_bytes(), &server_payload(), None).unwrap();
    let (_, evil) = {
        let (_, h2) = ClientHandshake::start(IDENTITY_ID, b"other", None).unwrap();
        respond(
            &parse_client_hello(&h2).unwrap(),
            b"other",
            &server_payload(),
            None,
        )
        .unwrap()
    };
    assert_eq!(client.finish(&evil).unwrap_err(), ProtocolError::AuthFailed);
    let (client2, _) = ClientHandshake::start(IDENTITY_ID, SECRET.as_bytes(), None).unwrap();
    assert!(
        client2.finish(&reply).is_err(),
        "a reply to another handshake does not finish this one"
    );
}

#[test]
fn every_flipped_byte_of_either_hello_is_rejected() {
    let (_, hello) = ClientHandshake::start(IDENTITY_ID, SECRET.as_bytes(), None).unwrap();
    for i in 0..hello.len() {
        let mut h = hello.clone();
        h[i] ^= 0x01;
        let ok = parse_client_hello(&h)
            .and_then(|p| respond(&p, SECRET.as_bytes(), &server_payload(), None));
        assert!(ok.is_err(), "client hello byte {i}");
    }
    let (client_hello_state, hello) =
        ClientHandshake::start(IDENTITY_ID, SECRET.as_bytes(), None).unwrap();
    drop(client_hello_state);
    let (_, reply) = respond(
        &parse_client_hello(&hello).unwrap(),
        SECRET.as_bytes(),
        &server_payload(),
        None,
    )
    .unwrap();
    for i in 0..reply.len() {
        // A fresh client state per try: a failed read poisons the old one.
        let (c, h) = ClientHandshake::start(
            IDENTITY_ID,
            SECRET.as_bytes(),
            Some(&vectors::CLIENT_EPHEMERAL),
        )
        .unwrap();
        let (_, r) = respond(
            &parse_client_hello(&h).unwrap(),
            SECRET.as_bytes(),
            &server_payload(),
            Some(&vectors::SERVER_EPHEMERAL),
        )
        .unwrap();
        let mut r = r.clone();
        let at = i % r.len();
        r[at] ^= 0x01;
        assert!(c.finish(&r).is_err(), "server hello byte {i}");
    }
}

#[test]
fn versions_and_sizes_are_checked() {
    let (_, mut hello) = ClientHandshake::start(IDENTITY_ID, SECRET.as_bytes(), None).unwrap();
    hello[0] = 2;
    assert_eq!(
        parse_client_hello(&hello).unwrap_err(),
        ProtocolError::UnsupportedVersion(2)
    );
    assert_eq!(
        parse_client_hello(&vec![1u8; 10_000]).unwrap_err(),
        ProtocolError::TooLarge
    );
    assert!(parse_client_hello(&[]).is_err());
    assert!(ClientHandshake::start("bad id!", b"x", None).is_err());
}

proptest::proptest! {
    #[test]
    fn client_hello_parser_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        if let Ok(p) = parse_client_hello(&data) {
            let _ = respond(&p, SECRET.as_bytes(), &server_payload(), None);
        }
    }

    #[test]
    fn server_hello_reader_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        let (c, _) = ClientHandshake::start(IDENTITY_ID, SECRET.as_bytes(), None).unwrap();
        let _ = c.finish(&data);
    }

    #[test]
    fn mutated_valid_hellos_never_panic(pos in 0usize..80, val in proptest::num::u8::ANY) {
        let (_, mut hello) = ClientHandshake::start(IDENTITY_ID, SECRET.as_bytes(), None).unwrap();
        let i = pos % hello.len();
        hello[i] = val;
        if let Ok(p) = parse_client_hello(&hello) {
            let _ = respond(&p, SECRET.as_bytes(), &server_payload(), None);
        }
    }
}
