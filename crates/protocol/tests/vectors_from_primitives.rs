//! A second implementation of the protocol, written from docs/protocol.md
//! and the Noise specification (revision 34) with nothing but primitives:
//! X25519 (curve25519-dalek), SHA-256, HMAC, HKDF and AES-256-GCM. No snow,
//! and nothing of this crate: it reads tests/vectors/v1.json as plain JSON
//! and rebuilds every handshake message, key and envelope in it from the
//! file's own inputs. If the doc, the file or the crate drift apart, this
//! fails; it is also the shortest recipe for a new client.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/v1.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is missing"))
}

fn bytes(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(text(v, field)).unwrap_or_else(|e| panic!("{field}: {e}"))
}

fn key32(v: &Value, field: &str) -> [u8; 32] {
    bytes(v, field).try_into().expect("32 bytes")
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// RFC 5869 HKDF-SHA256 with a 32-byte output (extract, then one expand block).
fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let prk = hmac(salt, &[ikm]);
    hmac(&prk, &[info, &[1]])
}

fn x25519(private: [u8; 32], public: [u8; 32]) -> [u8; 32] {
    MontgomeryPoint(public).mul_clamped(private).to_bytes()
}

fn x25519_public(private: [u8; 32]) -> [u8; 32] {
    MontgomeryPoint::mul_base_clamped(private).to_bytes()
}

fn aes_gcm(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], msg: &[u8], seal: bool) -> Vec<u8> {
    let c = Aes256Gcm::new_from_slice(key).unwrap();
    let payload = Payload { msg, aad };
    if seal {
        c.encrypt(Nonce::from_slice(nonce), payload).unwrap()
    } else {
        c.decrypt(Nonce::from_slice(nonce), payload).expect("opens")
    }
}

/// Noise's SymmetricState and CipherState for SHA-256 and AES-GCM.
struct Symmetric {
    ck: [u8; 32],
    h: [u8; 32],
    k: Option<[u8; 32]>,
    n: u64,
}

impl Symmetric {
    fn new(protocol_name: &str, prologue: &[u8]) -> Self {
        // A name of exactly HASHLEN bytes is used as h as it is.
        let h: [u8; 32] = protocol_name.as_bytes().try_into().expect("32-byte name");
        let mut s = Symmetric {
            ck: h,
            h,
            k: None,
            n: 0,
        };
        s.mix_hash(prologue);
        s
    }

    /// Noise HKDF: HMAC-SHA256 chained, three outputs.
    fn hkdf(&self, ikm: &[u8]) -> [[u8; 32]; 3] {
        let temp = hmac(&self.ck, &[ikm]);
        let o1 = hmac(&temp, &[&[1]]);
        let o2 = hmac(&temp, &[&o1, &[2]]);
        let o3 = hmac(&temp, &[&o2, &[3]]);
        [o1, o2, o3]
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.h = Sha256::new()
            .chain_update(self.h)
            .chain_update(data)
            .finalize()
            .into();
    }

    fn mix_key(&mut self, ikm: &[u8]) {
        let [ck, k, _] = self.hkdf(ikm);
        (self.ck, self.k, self.n) = (ck, Some(k), 0);
    }

    fn mix_key_and_hash(&mut self, ikm: &[u8]) {
        let [ck, h, k] = self.hkdf(ikm);
        self.ck = ck;
        self.mix_hash(&h);
        (self.k, self.n) = (Some(k), 0);
    }

    /// AESGCM's Noise nonce: 32 zero bits, then n as a 64-bit big-endian number.
    fn nonce(&self) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.n.to_be_bytes());
        nonce
    }

    fn encrypt_and_hash(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let ct = aes_gcm(&self.k.unwrap(), &self.nonce(), &self.h, plaintext, true);
        self.mix_hash(&ct);
        self.n += 1;
        ct
    }

    fn decrypt_and_hash(&mut self, ciphertext: &[u8]) -> Vec<u8> {
        let pt = aes_gcm(&self.k.unwrap(), &self.nonce(), &self.h, ciphertext, false);
        self.mix_hash(ciphertext);
        self.n += 1;
        pt
    }

    fn split(&self) -> ([u8; 32], [u8; 32]) {
        let [k1, k2, _] = self.hkdf(&[]);
        (k1, k2)
    }
}

/// Both sides of one NNpsk0 exchange; checks every value the vector lists.
/// Returns (c2s, s2c).
fn noise_nnpsk0(v: &Value, psk: [u8; 32], prologue: &[u8], hello_header: &[u8]) -> [[u8; 32]; 2] {
    let name = text(v, "noise_protocol");
    assert_eq!(name, "Noise_NNpsk0_25519_AESGCM_SHA256");
    assert_eq!(hex::encode(psk), text(v, "psk"));
    assert_eq!(hex::encode(prologue), text(v, "prologue"));
    let e = key32(v, "client_ephemeral_private");
    let re = key32(v, "server_ephemeral_private");
    let (e_pub, re_pub) = (x25519_public(e), x25519_public(re));
    assert_eq!(hex::encode(e_pub), text(v, "client_ephemeral_public"));
    assert_eq!(hex::encode(re_pub), text(v, "server_ephemeral_public"));

    // Message 1, initiator: -> psk, e (payload empty).
    let mut client = Symmetric::new(name, prologue);
    client.mix_key_and_hash(&psk);
    client.mix_hash(&e_pub);
    client.mix_key(&e_pub); // psk handshakes mix the ephemeral into the key too
    let mut m1 = e_pub.to_vec();
    m1.extend(client.encrypt_and_hash(&[]));
    assert_eq!(m1.len(), 48);
    assert_eq!(hex::encode(&m1), text(v, "noise_message_1"));
    let hello = [hello_header, &m1].concat();

    // Message 1, responder reads it.
    let mut server = Symmetric::new(name, prologue);
    server.mix_key_and_hash(&psk);
    let (their_e, tag) = m1.split_at(32);
    server.mix_hash(their_e);
    server.mix_key(their_e);
    assert!(
        server.decrypt_and_hash(tag).is_empty(),
        "message 1 payload is empty"
    );

    // Message 2, responder: <- e, ee, payload = the ServerHello JSON.
    server.mix_hash(&re_pub);
    server.mix_key(&re_pub);
    server.mix_key(&x25519(re, their_e.try_into().unwrap()));
    let payload = text(v, "server_hello_payload_text");
    let mut m2 = re_pub.to_vec();
    m2.extend(server.encrypt_and_hash(payload.as_bytes()));
    assert_eq!(hex::encode(&m2), text(v, "noise_message_2"));
    assert_eq!(
        hex::encode([&[1u8][..], &m2].concat()),
        text(v, "server_hello")
    );

    // Message 2, initiator reads it.
    let (their_re, ct) = m2.split_at(32);
    client.mix_hash(their_re);
    client.mix_key(their_re);
    client.mix_key(&x25519(e, their_re.try_into().unwrap()));
    assert_eq!(client.decrypt_and_hash(ct), payload.as_bytes());
    let payload: Value = serde_json::from_str(payload).unwrap();
    assert!(payload["session"].as_str().is_some_and(|s| s.len() == 32));

    // Split and the floatlm key schedule.
    assert_eq!(client.h, server.h);
    assert_eq!(hex::encode(client.h), text(v, "handshake_hash"));
    let (k1, k2) = client.split();
    assert_eq!((k1, k2), server.split());
    assert_eq!(hex::encode(k1), text(v, "split_k1"));
    assert_eq!(hex::encode(k2), text(v, "split_k2"));
    let c2s = hkdf32(&client.h, &k1, b"floatlm c2s v1");
    let s2c = hkdf32(&client.h, &k2, b"floatlm s2c v1");
    assert_eq!(hex::encode(c2s), text(v, "c2s_key"));
    assert_eq!(hex::encode(s2c), text(v, "s2c_key"));
    let whole = if v.get("client_hello").is_some() {
        "client_hello"
    } else {
        "resume_hello"
    };
    assert_eq!(hex::encode(hello), text(v, whole));
    [c2s, s2c]
}

#[test]
fn the_handshake_from_primitives() {
    let all = vectors();
    let v = &all["handshake"];
    let id = text(v, "identity_id");
    let secret = text(v, "secret_text");
    let psk = hkdf32(b"floatlm-psk-v1", secret.as_bytes(), id.as_bytes());
    let prologue = [b"floatlm/1 ".as_slice(), id.as_bytes()].concat();
    let header = [&[1u8, id.len() as u8][..], id.as_bytes()].concat();
    noise_nnpsk0(v, psk, &prologue, &header);
}

#[test]
fn the_resumption_from_primitives() {
    let all = vectors();
    let v = &all["resume"];
    let ticket = bytes(v, "ticket");
    let psk = hkdf32(b"floatlm-resume-v1", &bytes(v, "resumption_secret"), b"psk");
    let prologue = [b"floatlm/1 resume ".as_slice(), &ticket].concat();
    let header = [&[1u8][..], &(ticket.len() as u16).to_be_bytes(), &ticket].concat();
    noise_nnpsk0(v, psk, &prologue, &header);
}

#[test]
fn every_envelope_from_primitives() {
    let all = vectors();
    let envelopes = all["envelopes"].as_array().unwrap();
    assert!(!envelopes.is_empty());
    for e in envelopes {
        let name = text(e, "name");
        let dir = e["direction"].as_u64().unwrap() as u8;
        assert!(dir == 1 || dir == 2, "{name}");
        let seq = e["seq"].as_u64().unwrap();
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&(dir as u32).to_be_bytes());
        nonce[4..].copy_from_slice(&seq.to_be_bytes());
        assert_eq!(hex::encode(nonce), text(e, "nonce"), "{name}");
        let mut aad = b"floatlm-envelope-v1".to_vec();
        aad.extend([1, dir]);
        for field in ["method", "path", "instance_text", "session_text"] {
            let part = text(e, field).as_bytes();
            aad.extend((part.len() as u32).to_be_bytes());
            aad.extend(part);
        }
        aad.extend(seq.to_be_bytes());
        assert_eq!(hex::encode(&aad), text(e, "aad"), "{name}");
        let plaintext = text(e, "plaintext_text").as_bytes();
        let mut envelope = vec![1u8];
        envelope.extend(seq.to_be_bytes());
        envelope.extend(aes_gcm(&key32(e, "key"), &nonce, &aad, plaintext, true));
        assert_eq!(hex::encode(&envelope), text(e, "envelope"), "{name}");
        // The key is the session's key for that direction.
        let exchange = if text(e, "session_text") == session_of(&all["resume"]) {
            &all["resume"]
        } else {
            assert_eq!(text(e, "session_text"), session_of(&all["handshake"]));
            &all["handshake"]
        };
        let which = if dir == 1 { "c2s_key" } else { "s2c_key" };
        assert_eq!(text(e, "key"), text(exchange, which), "{name}");
    }
}

fn session_of(exchange: &Value) -> String {
    let payload: Value = serde_json::from_str(text(exchange, "server_hello_payload_text")).unwrap();
    payload["session"].as_str().unwrap().to_string()
}
