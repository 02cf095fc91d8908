//! Handshake and vectors: the protocol crate's side of the contract.

use floatlm_protocol::envelope::{self, Direction};
use floatlm_protocol::handshake::{
    parse_client_hello, parse_resume_hello, respond, respond_resume, ClientHandshake,
};
use floatlm_protocol::vectors::{
    self, resume_payload, server_payload, IDENTITY_ID, RESUME_SECRET, RESUME_TICKET, SECRET,
};
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

#[test]
fn resumption_round_trip_gives_fresh_keys_each_time() {
    let run = || {
        let (c, hello) = ClientHandshake::resume(RESUME_TICKET, &RESUME_SECRET, None).unwrap();
        let parsed = parse_resume_hello(&hello).unwrap();
        assert_eq!(parsed.ticket, RESUME_TICKET);
        let (server, reply) =
            respond_resume(&parsed, &RESUME_SECRET, &resume_payload(), None).unwrap();
        let (client, payload) = c.finish(&reply).unwrap();
        assert_eq!(client, server);
        assert_eq!(payload, resume_payload());
        client
    };
    assert_ne!(run(), run(), "ephemerals make every resumption's keys new");
}

#[test]
fn resumption_needs_the_secret_and_the_same_ticket() {
    let (_, hello) = ClientHandshake::resume(RESUME_TICKET, &[0x55; 32], None).unwrap();
    let parsed = parse_resume_hello(&hello).unwrap();
    assert_eq!(
        respond_resume(&parsed, &RESUME_SECRET, &resume_payload(), None).unwrap_err(),
        ProtocolError::AuthFailed
    );
    // A ticket swapped under a recorded hello: the prologue no longer matches.
    let (_, hello) = ClientHandshake::resume(RESUME_TICKET, &RESUME_SECRET, None).unwrap();
    let mut swapped = hello.clone();
    let at = 3 + RESUME_TICKET.len() - 1;
    swapped[at] ^= 0x01;
    let parsed = parse_resume_hello(&swapped).unwrap();
    assert_eq!(
        respond_resume(&parsed, &RESUME_SECRET, &resume_payload(), None).unwrap_err(),
        ProtocolError::AuthFailed
    );
    for i in 0..hello.len() {
        let mut h = hello.clone();
        h[i] ^= 0x01;
        let ok = parse_resume_hello(&h)
            .and_then(|p| respond_resume(&p, &RESUME_SECRET, &resume_payload(), None));
        assert!(ok.is_err(), "resume hello byte {i}");
    }
}

#[test]
fn resume_hello_framing_is_checked() {
    assert!(ClientHandshake::resume(&[], &RESUME_SECRET, None).is_err());
    assert!(ClientHandshake::resume(&[1; 1025], &RESUME_SECRET, None).is_err());
    assert!(ClientHandshake::resume(RESUME_TICKET, &[1; 31], None).is_err());
    let (_, mut hello) = ClientHandshake::resume(RESUME_TICKET, &RESUME_SECRET, None).unwrap();
    assert!(parse_resume_hello(&hello[..hello.len() - 1]).is_ok());
    assert!(parse_resume_hello(&hello[..3 + RESUME_TICKET.len() + 31]).is_err());
    hello[1] = 0xff;
    assert_eq!(
        parse_resume_hello(&hello).unwrap_err(),
        ProtocolError::Malformed("ticket length")
    );
    assert!(parse_resume_hello(&[1, 0]).is_err());
    assert!(parse_resume_hello(&[1, 0, 0]).is_err());
}

#[test]
fn the_resumption_secret_never_shows_in_debug_output() {
    let p = resume_payload();
    let shown = format!("{p:?}");
    let secret = p.resume.as_ref().unwrap().secret.clone();
    assert!(!shown.contains(&secret), "{shown}");
    assert!(shown.contains("redacted"));
}

proptest::proptest! {
    #[test]
    fn resume_hello_parser_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        if let Ok(p) = parse_resume_hello(&data) {
            let _ = respond_resume(&p, &RESUME_SECRET, &resume_payload(), None);
        }
    }

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
