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

/// Every message and envelope of the vectors, rebuilt with this crate from
/// the file's contents alone: inputs read from the JSON, nothing from the
/// constants of `vectors`.
#[test]
fn every_vector_is_reproduced_from_the_file_alone() {
    use floatlm_protocol::handshake::ServerHelloPayload;
    use floatlm_protocol::keys::{derive_psk, derive_resume_psk};
    let v: vectors::Vectors = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/vectors/v1.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let bytes = |h: &str| hex::decode(h).unwrap();
    let key = |h: &str| -> [u8; 32] { bytes(h).try_into().unwrap() };

    let h = &v.handshake;
    assert_eq!(
        hex::encode(derive_psk(h.secret_text.as_bytes(), &h.identity_id)),
        h.psk
    );
    let (client, hello) = ClientHandshake::start(
        &h.identity_id,
        h.secret_text.as_bytes(),
        Some(&key(&h.client_ephemeral_private)),
    )
    .unwrap();
    assert_eq!(hex::encode(&hello), h.client_hello);
    assert!(h.client_hello.ends_with(&h.noise_message_1));
    assert!(h.noise_message_1.starts_with(&h.client_ephemeral_public));
    let payload: ServerHelloPayload = serde_json::from_str(&h.server_hello_payload_text).unwrap();
    let (server_keys, reply) = respond(
        &parse_client_hello(&hello).unwrap(),
        h.secret_text.as_bytes(),
        &payload,
        Some(&key(&h.server_ephemeral_private)),
    )
    .unwrap();
    assert_eq!(hex::encode(&reply), h.server_hello);
    assert_eq!(h.server_hello, format!("01{}", h.noise_message_2));
    assert!(h.noise_message_2.starts_with(&h.server_ephemeral_public));
    let (keys, read) = client.finish(&reply).unwrap();
    assert_eq!((keys.clone(), read), (server_keys, payload));
    assert_eq!(
        (hex::encode(keys.c2s), hex::encode(keys.s2c)),
        (h.c2s_key.clone(), h.s2c_key.clone())
    );

    let r = &v.resume;
    let (ticket, secret) = (bytes(&r.ticket), bytes(&r.resumption_secret));
    assert_eq!(hex::encode(derive_resume_psk(&secret)), r.psk);
    let (client, hello) =
        ClientHandshake::resume(&ticket, &secret, Some(&key(&r.client_ephemeral_private))).unwrap();
    assert_eq!(hex::encode(&hello), r.resume_hello);
    assert!(r.resume_hello.ends_with(&r.noise_message_1));
    let payload: ServerHelloPayload = serde_json::from_str(&r.server_hello_payload_text).unwrap();
    let (server_keys, reply) = respond_resume(
        &parse_resume_hello(&hello).unwrap(),
        &secret,
        &payload,
        Some(&key(&r.server_ephemeral_private)),
    )
    .unwrap();
    assert_eq!(hex::encode(&reply), r.server_hello);
    let (keys, read) = client.finish(&reply).unwrap();
    assert_eq!((keys.clone(), read), (server_keys, payload));
    assert_eq!(
        (hex::encode(keys.c2s), hex::encode(keys.s2c)),
        (r.c2s_key.clone(), r.s2c_key.clone())
    );

    let resumed_session = serde_json::from_str::<ServerHelloPayload>(&r.server_hello_payload_text)
        .unwrap()
        .session;
    assert_eq!(v.envelopes.len(), 9);
    for e in &v.envelopes {
        let dir = match e.direction {
            1 => Direction::ClientToServer,
            2 => Direction::ServerToClient,
            d => panic!("direction {d}"),
        };
        let b = envelope::Binding {
            method: &e.method,
            path: &e.path,
            instance: &e.instance_text,
            session: &e.session_text,
        };
        let k = key(&e.key);
        assert_eq!(
            hex::encode(envelope::nonce(dir, e.seq)),
            e.nonce,
            "{}",
            e.name
        );
        assert_eq!(
            hex::encode(envelope::aad(&b, dir, e.seq)),
            e.aad,
            "{}",
            e.name
        );
        let sealed = envelope::seal(&k, dir, e.seq, &b, e.plaintext_text.as_bytes());
        assert_eq!(hex::encode(&sealed), e.envelope, "{}", e.name);
        assert_eq!(
            envelope::open(&k, dir, &b, &sealed).unwrap(),
            (e.seq, e.plaintext_text.clone().into_bytes()),
            "{}",
            e.name
        );
        // Keys belong to the session the binding names.
        let (c2s, s2c) = if e.session_text == resumed_session {
            (&r.c2s_key, &r.s2c_key)
        } else {
            (&h.c2s_key, &h.s2c_key)
        };
        assert_eq!(
            &e.key,
            if e.direction == 1 { c2s } else { s2c },
            "{}",
            e.name
        );
    }
}

#[test]
fn message_1_must_be_48_bytes_with_an_empty_payload() {
    use floatlm_protocol::handshake::NOISE_MESSAGE_1_LEN;
    let (_, hello) = ClientHandshake::start(IDENTITY_ID, SECRET.as_bytes(), None).unwrap();
    let at = 2 + IDENTITY_ID.len();
    assert_eq!(hello.len() - at, NOISE_MESSAGE_1_LEN);
    for len in [0, 1, 31, 32, 43, 47, 49, 53, 200] {
        let mut h = hello[..at].to_vec();
        h.extend(std::iter::repeat_n(7u8, len));
        assert!(
            matches!(parse_client_hello(&h), Err(ProtocolError::Malformed(_))),
            "{len}-byte message 1"
        );
    }
    // A well-made message 1 that carries a 5-byte payload: refused, not answered.
    let psk = floatlm_protocol::keys::derive_psk(SECRET.as_bytes(), IDENTITY_ID);
    let mut prologue = b"floatlm/1 ".to_vec();
    prologue.extend_from_slice(IDENTITY_ID.as_bytes());
    let mut noise = snow::Builder::new(floatlm_protocol::NOISE_PATTERN.parse().unwrap())
        .psk(0, &psk)
        .prologue(&prologue)
        .build_initiator()
        .unwrap();
    let mut msg = vec![0u8; 128];
    let n = noise.write_message(b"hello", &mut msg).unwrap();
    assert_eq!(n, NOISE_MESSAGE_1_LEN + 5);
    let mut h = hello[..at].to_vec();
    h.extend_from_slice(&msg[..n]);
    assert!(matches!(
        parse_client_hello(&h),
        Err(ProtocolError::Malformed(_))
    ));
    // The same for a ResumeHello.
    let (_, hello) = ClientHandshake::resume(RESUME_TICKET, &RESUME_SECRET, None).unwrap();
    assert!(parse_resume_hello(&hello).is_ok());
    for cut in [1, 5, 16] {
        assert!(parse_resume_hello(&hello[..hello.len() - cut]).is_err());
    }
    let mut long = hello.clone();
    long.push(0);
    assert!(parse_resume_hello(&long).is_err());
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
    assert!(parse_resume_hello(&hello).is_ok());
    assert!(parse_resume_hello(&hello[..hello.len() - 1]).is_err());
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
