//! The client's side of the contract: identity strings and the test vectors.

use floatlm_client::{ClientError, ServerSpec};
use floatlm_protocol::handshake::ClientHandshake;
use floatlm_protocol::vectors;

#[test]
fn identity_strings_parse_and_never_print_the_secret() {
    let s: ServerSpec = "00112233aabbccdd:s3cr3t-value@lic.example.com:8990"
        .parse()
        .unwrap();
    assert_eq!(s.identity_id, "00112233aabbccdd");
    assert_eq!(s.address, "lic.example.com:8990");
    assert!(!format!("{s:?}").contains("s3cr3t"));
    for bad in [
        "",
        "nope",
        "id@host:1",
        "id:@host:1",
        "id:secret@host",
        "id:secret@host:port",
        "i d:s@h:1",
    ] {
        assert!(
            matches!(bad.parse::<ServerSpec>(), Err(ClientError::BadIdentity(_))),
            "{bad}"
        );
    }
}

#[test]
fn the_vector_identity_produces_the_vector_client_hello() {
    let v = vectors::shipped().handshake;
    // The secret is used as the bytes of the text after the ':'.
    let ident = format!("{}:{}@127.0.0.1:8990", v.identity_id, v.secret_text);
    let spec: ServerSpec = ident.parse().unwrap();
    let (_, hello) = ClientHandshake::start(
        &spec.identity_id,
        v.secret_text.as_bytes(),
        Some(&vectors::CLIENT_EPHEMERAL),
    )
    .unwrap();
    assert_eq!(hex::encode(hello), v.client_hello);
}

#[tokio::test]
async fn unreachable_servers_give_a_clear_error() {
    // Port 9 on loopback: nothing listens there.
    let err = floatlm_client::Client::connect(
        &["00112233aabbccdd:secretsecretsecret@127.0.0.1:9"],
        floatlm_client::Options {
            request_timeout: std::time::Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("must fail");
    assert!(matches!(err, ClientError::Unreachable(_)), "{err}");
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
}
