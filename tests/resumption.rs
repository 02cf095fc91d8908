//! Resumable sessions: a ticket from one instance continues the session on
//! another (shared MariaDB), keys rotate, and tickets of revoked identities,
//! expired tickets and altered tickets are refused.

use floatlm::app::App;
use floatlm::domain::license::VendorSigningKey;
use floatlm_protocol::envelope::{self, Binding, Direction};
use floatlm_protocol::handshake::{ClientHandshake, ResumeGrant, ServerHelloPayload};
use floatlm_protocol::keys::SessionKeys;
use floatlm_protocol::messages::{Request, Response, SealedResponse};
use floatlm_protocol::{HEADER_SESSION, PATH_HANDSHAKE, PATH_REQUEST, PATH_RESUME};
use std::sync::Arc;
use std::time::Duration;
use testkit::{wait_for, TestDb, MASTER_KEY_1};

struct Node {
    app: Arc<App>,
    addr: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

/// An in-process instance on `db` with extra config flags.
async fn node(db: &TestDb, vendor: &VendorSigningKey, flags: &[(&'static str, &str)]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut l = testkit::layers(dir.path(), Some(&db.url), MASTER_KEY_1, vendor);
    for (k, v) in flags {
        l.flag(k, Some(*v));
    }
    let app = App::start(l.build().unwrap()).await.unwrap();
    let (addr, _, stop) = testkit::serve_in_process(app.clone()).await;
    Node {
        app,
        addr,
        _stop: stop,
        _dir: dir,
    }
}

async fn post(addr: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

fn error_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["error"].as_str().unwrap().to_string()
}

/// A handshake, confirmed by a first request (sequence number 0), whose
/// sealed answer carries the session's ticket: returned in `resume` of the
/// payload. The ServerHello itself carries none.
async fn handshake(addr: &str, id: &str, secret: &str) -> (SessionKeys, ServerHelloPayload) {
    let (hs, hello) = ClientHandshake::start(id, secret.as_bytes(), None).unwrap();
    let (status, body) = post(addr, PATH_HANDSHAKE, hello).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    confirm(addr, hs.finish(&body).unwrap()).await
}

/// The first request of a new session: it goes live, and the answer
/// carries its resumption ticket.
async fn confirm(
    addr: &str,
    (keys, mut payload): (SessionKeys, ServerHelloPayload),
) -> (SessionKeys, ServerHelloPayload) {
    assert!(
        payload.resume.is_none(),
        "no ticket before the first request"
    );
    let first = info(addr, &keys, &payload.session, 0).await;
    assert!(matches!(first.response, Response::Info { .. }));
    payload.resume = first.resume;
    (keys, payload)
}

/// Resumes with `grant` on `addr` and confirms the session as
/// [`handshake`] does: Ok(session) or Err((status, error code)).
async fn resume(
    addr: &str,
    grant: &ResumeGrant,
) -> Result<(SessionKeys, ServerHelloPayload), (u16, String)> {
    let ticket = hex::decode(&grant.ticket).unwrap();
    let secret = hex::decode(&grant.secret).unwrap();
    let (hs, hello) = ClientHandshake::resume(&ticket, &secret, None).unwrap();
    let (status, body) = post(addr, PATH_RESUME, hello).await;
    if status != 200 {
        return Err((status, error_code(&body)));
    }
    Ok(confirm(addr, hs.finish(&body).unwrap()).await)
}

/// One sealed `info` request on a session; the reply.
async fn info(addr: &str, keys: &SessionKeys, session: &str, seq: u64) -> SealedResponse {
    let b = Binding {
        method: "POST",
        path: PATH_REQUEST,
        instance: "",
        session,
    };
    let req = serde_json::to_vec(&Request::Info { features: vec![] }).unwrap();
    let body = envelope::seal(&keys.c2s, Direction::ClientToServer, seq, &b, &req);
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{PATH_REQUEST}"))
        .header(HEADER_SESSION, session)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    let (_, pt) = envelope::open(&keys.s2c, Direction::ServerToClient, &b, &bytes).unwrap();
    serde_json::from_slice(&pt).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_from_one_instance_resumes_on_another_until_revoked() {
    let db = TestDb::new().await;
    let vendor = VendorSigningKey::generate();
    let a = node(&db, &vendor, &[("instance_id", "a")]).await;
    let b = node(&db, &vendor, &[("instance_id", "b")]).await;
    let (_, created) = a.app.access().create_identity("ws1", None).await.unwrap();
    let (id, secret) = (created.id.clone(), created.secret.expose().to_string());

    let (_, hello) = handshake(&a.addr, &id, &secret).await;
    assert_eq!(hello.instance, "a");
    let grant = hello
        .resume
        .clone()
        .expect("a handshake hands out a ticket");
    assert!(grant.valid_for_s > 86_000, "{grant:?}");

    // Instance b never saw this client: the ticket alone continues the session.
    let (keys, resumed) = resume(&b.addr, &grant).await.unwrap();
    assert_eq!(resumed.instance, "b");
    assert_ne!(resumed.session, hello.session, "a new session id");
    assert!(matches!(
        info(&b.addr, &keys, &resumed.session, 1).await,
        SealedResponse {
            response: Response::Info { .. },
            resume: None,
        }
    ));
    let counts = b.app.admission().session_counts();
    assert_eq!((counts.handshakes, counts.resumes), (0, 1));
    // The resumed session carries a fresh ticket, and the old one still works.
    let fresh = resumed
        .resume
        .clone()
        .expect("a resumption hands out a ticket");
    assert_ne!(fresh.ticket, grant.ticket);
    resume(&a.addr, &fresh).await.unwrap();
    resume(&b.addr, &grant).await.unwrap();

    // Without the ticket's secret the ticket is worthless.
    let stolen = ResumeGrant {
        ticket: grant.ticket.clone(),
        secret: hex::encode([7u8; 32]),
        valid_for_s: 1,
    };
    assert_eq!(
        resume(&b.addr, &stolen).await.unwrap_err(),
        (401, "auth_failed".into())
    );
    // An altered ticket does not open.
    let mut bytes = hex::decode(&grant.ticket).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let altered = ResumeGrant {
        ticket: hex::encode(bytes),
        secret: grant.secret.clone(),
        valid_for_s: 1,
    };
    assert_eq!(
        resume(&b.addr, &altered).await.unwrap_err(),
        (401, "ticket_refused".into())
    );

    // Revoked on a: b refuses the ticket at once (it reads the identity row).
    a.app.access().revoke_identity(&id).await.unwrap();
    for n in [&a, &b] {
        assert_eq!(
            resume(&n.addr, &fresh).await.unwrap_err(),
            (401, "ticket_refused".into())
        );
    }
    assert!(b.app.admission().session_counts().resumes_refused >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_expire_and_keys_rotate_across_instances() {
    let db = TestDb::new().await;
    let vendor = VendorSigningKey::generate();
    // Keys rotate every 2 s and tickets live 3 s: several keys are live at once.
    let flags = [
        ("ticket_rotation", "2s"),
        ("ticket_lifetime", "3s"),
        ("cluster_heartbeat", "0.2s"),
    ];
    let a = node(&db, &vendor, &flags).await;
    let b = node(&db, &vendor, &flags).await;
    let (_, created) = a.app.access().create_identity("ws2", None).await.unwrap();
    let (id, secret) = (created.id.clone(), created.secret.expose().to_string());

    let (_, first) = handshake(&a.addr, &id, &secret).await;
    let first = first.resume.unwrap();
    assert!(first.valid_for_s <= 3, "{first:?}");
    let key_of = |g: &ResumeGrant| {
        let t = hex::decode(&g.ticket).unwrap();
        i64::from_be_bytes(t[..8].try_into().unwrap())
    };
    // Wait for the next period: a new key, created once, used by both.
    let later = wait_for("a newer ticket key", Duration::from_secs(10), || async {
        let (_, p) = handshake(&b.addr, &id, &secret).await;
        let g = p.resume.unwrap();
        (key_of(&g) > key_of(&first)).then_some(g)
    })
    .await;
    // The older key still opens its tickets while they are valid.
    resume(&a.addr, &first).await.unwrap();
    resume(&a.addr, &later).await.unwrap();
    resume(&b.addr, &first).await.unwrap();

    // Past its lifetime a ticket is refused, whichever instance sees it.
    let refused = wait_for(
        "the first ticket to expire",
        Duration::from_secs(10),
        || async { resume(&a.addr, &first).await.err() },
    )
    .await;
    assert_eq!(refused, (401, "ticket_refused".into()));
    assert_eq!(
        resume(&b.addr, &first).await.unwrap_err(),
        (401, "ticket_refused".into())
    );
    // Keys that can no longer open a live ticket are deleted from the database.
    let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
    let ids: Vec<i64> = wait_for("old ticket keys purged", Duration::from_secs(10), || {
        let pool = pool.clone();
        let oldest = key_of(&first);
        async move {
            let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM ticket_keys ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
            (!ids.contains(&oldest)).then_some(ids)
        }
    })
    .await;
    assert!(!ids.is_empty(), "the current key stays");
}

/// The client library: a session lost on one instance is resumed on the
/// other with the ticket, without a second login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_resumes_instead_of_logging_in_again() {
    let db = TestDb::new().await;
    let vendor = VendorSigningKey::generate();
    let a = node(&db, &vendor, &[("instance_id", "a")]).await;
    let b = node(&db, &vendor, &[("instance_id", "b")]).await;
    let (_, created) = a.app.access().create_identity("ws3", None).await.unwrap();
    let cred = format!("{}:{}", created.id, created.secret.expose());
    let ids = [format!("{cred}@{}", a.addr), format!("{cred}@{}", b.addr)];
    let client = floatlm_client::Client::connect(&ids, floatlm_client::Options::default())
        .await
        .unwrap();
    client.query(&[]).await.unwrap();
    let before = client.session_stats();
    assert!(before.handshakes >= 1, "{before:?}");
    // Forget every session on both instances (as after a restart): the next
    // call gets 401 session_unknown and resumes instead of logging in.
    for n in [&a, &b] {
        n.app.admission().forget_sessions();
    }
    client.query(&[]).await.unwrap();
    // Both instances are raced; the loser's resumption may finish too.
    let stats = client.session_stats();
    assert_eq!(
        stats.handshakes, before.handshakes,
        "no second login: {stats:?}"
    );
    assert!(stats.resumes > before.resumes, "{stats:?}");
    // A refused ticket (identity revoked) falls back to a handshake, which
    // then reports the revocation.
    a.app.access().revoke_identity(&created.id).await.unwrap();
    // What b's next cluster heartbeat does (within one `cluster_heartbeat`):
    // until then b's identity cache may still admit a handshake.
    b.app.access().follow_identity_changes().await.unwrap();
    for n in [&a, &b] {
        n.app.admission().forget_sessions();
    }
    match client.query(&[]).await {
        Err(floatlm_client::ClientError::IdentityRefused { reason, .. }) => {
            assert!(reason.contains("revoked"), "{reason}")
        }
        other => panic!("expected the revocation, got {other:?}"),
    }
    assert!(client.session_stats().resumes_refused >= 1);
}
