//! The licensing protocol end to end: real servers on port 0, the client
//! library, the CLI, auth scripts, tampering and replay, failover.

use floatlm_client::{AuthInfo, Client, ClientError, HandleState, NoLicenseReason, Options};
use floatlm_protocol::envelope::{self, Binding, Direction};
use floatlm_protocol::handshake::ClientHandshake;
use floatlm_protocol::messages::{Request, Response};
use floatlm_protocol::{vectors, HEADER_INSTANCE, HEADER_SESSION, PATH_HANDSHAKE, PATH_REQUEST};
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::{wait_for, Kind, Serve, ServerProc, TestApp, TestDb, MASTER_KEY_1};

struct Demo {
    proc: ServerProc,
    identity: String,
    admin_token: String,
    _dir: tempfile::TempDir,
    _db: Option<TestDb>,
}

/// A `serve --demo` server (feature `demo`, 5 seats) with a 5 s lease TTL.
async fn demo(kind: Kind, extra: &[&str], env: &[(&str, &str)]) -> Demo {
    let db = TestDb::for_kind(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let proc = Serve::in_dir(dir.path())
        .demo()
        .args(&["--lease-ttl", "5s"])
        .no_drain_delay()
        .envs(env)
        .on(kind, db.as_ref())
        .args(extra)
        .start();
    let identity = std::fs::read_to_string(dir.path().join("data/demo-identity.txt"))
        .unwrap()
        .trim()
        .to_string();
    let admin_token = std::fs::read_to_string(dir.path().join("data/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    Demo {
        proc,
        identity,
        admin_token,
        _dir: dir,
        _db: db,
    }
}

fn opts(data: &str) -> Options {
    Options {
        retry_interval: Duration::from_millis(500),
        request_timeout: Duration::from_secs(3),
        auth: AuthInfo {
            mech: "token".into(),
            data: data.into(),
            user: "tester".into(),
            groups: vec!["cad-users".into()],
            host: "testhost".into(),
        },
        ..Options::default()
    }
}

async fn admin_get(d: &Demo, path: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("http://{}{path}", d.proc.admin))
        .bearer_auth(&d.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn used(client: &Client) -> i64 {
    client.query(&["demo"]).await.unwrap()[0].used
}

async fn seats_release_and_heartbeats(kind: Kind) {
    let d = demo(kind, &[], &[]).await;
    let client = Client::connect(&[&d.identity], opts("")).await.unwrap();
    let mut seats = Vec::new();
    for _ in 0..5 {
        seats.push(client.checkout("demo").await.unwrap());
    }
    let leases: std::collections::HashSet<String> = seats.iter().map(|s| s.lease()).collect();
    assert_eq!(leases.len(), 5);
    match client.checkout("demo").await {
        Err(ClientError::NoLicense {
            reason: NoLicenseReason::AllSeatsTaken,
            message,
        }) => {
            assert!(message.starts_with("No license"), "{message}")
        }
        other => panic!(
            "the 6th checkout must be refused: {:?}",
            other.map(|s| s.lease())
        ),
    }
    let q = client.query(&[]).await.unwrap();
    assert_eq!((q[0].total, q[0].used, q[0].free), (5, 5, 0));
    assert!(seats.pop().unwrap().release().await);
    let again = client.checkout("demo").await.unwrap();
    assert!(matches!(
        client.checkout("nope").await,
        Err(ClientError::NoLicense {
            reason: NoLicenseReason::UnknownFeature,
            ..
        })
    ));
    // Heartbeats keep a lease alive past its TTL (5 s).
    let granted = Instant::now();
    let lease = again.lease();
    wait_for(
        "the lease to outlive its first TTL",
        Duration::from_secs(20),
        || async { (granted.elapsed() > Duration::from_secs(7)).then_some(()) },
    )
    .await;
    assert_eq!(again.state(), HandleState::Held);
    let live = admin_get(&d, "/admin/v1/leases").await;
    assert!(
        live["leases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["lease"] == lease.as_str()),
        "{live}"
    );
    assert_eq!(used(&client).await, 5);
    drop(seats);
    wait_for(
        "dropped handles to release their seats",
        Duration::from_secs(10),
        || async { (used(&client).await == 1).then_some(()) },
    )
    .await;
}

async fn a_vanished_client_loses_its_seat_after_the_ttl(kind: Kind) {
    let d = demo(kind, &[], &[]).await;
    let client = Client::connect(&[&d.identity], opts("")).await.unwrap();
    let mut child = std::process::Command::new(testkit::bin())
        .args(["checkout", "-s", &d.identity, "demo", "--hold", "300"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the CLI to hold a seat",
        Duration::from_secs(20),
        || async { (used(&client).await == 1).then_some(()) },
    )
    .await;
    child.kill().unwrap();
    let _ = child.wait();
    let killed = Instant::now();
    wait_for(
        "the vanished client's seat to expire",
        Duration::from_secs(20),
        || async { (used(&client).await == 0).then_some(()) },
    )
    .await;
    assert!(
        killed.elapsed() > Duration::from_secs(2),
        "the seat stayed taken until its lease ran out"
    );
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

async fn auth_script_allows_denies_times_out_and_crashes(kind: Kind) {
    let sdir = tempfile::tempdir().unwrap();
    let input = sdir.path().join("input.json");
    let allow = script(
        sdir.path(),
        "allow.sh",
        &format!(
            "cat > {}\ngrep -q '\"data\":\"letmein\"' {}",
            input.display(),
            input.display()
        ),
    );
    let d = demo(kind, &["--auth", &allow], &[]).await;
    let ok = Client::connect(&[&d.identity], opts("letmein"))
        .await
        .unwrap();
    let seat = ok.checkout("demo").await.unwrap();
    let seen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&input).unwrap()).unwrap();
    assert_eq!(seen["mech"], "token");
    assert_eq!(seen["data"], "letmein");
    assert_eq!(seen["user"], "tester");
    assert_eq!(seen["groups"], serde_json::json!(["cad-users"]));
    assert_eq!(seen["addr"], "127.0.0.1");
    let denied = Client::connect(&[&d.identity], opts("wrong"))
        .await
        .unwrap();
    match denied.checkout("demo").await {
        Err(ClientError::NoLicense {
            reason: NoLicenseReason::DeniedByAuthScript,
            message,
        }) => {
            assert!(
                message.starts_with("No license") && message.contains("exit code 1"),
                "{message}"
            )
        }
        other => panic!("expected a denial, got {:?}", other.map(|s| s.lease())),
    }
    assert_eq!(used(&ok).await, 1, "a denied login takes no seat");
    drop(seat);

    let slow = script(sdir.path(), "slow.sh", "sleep 30");
    let d2 = demo(
        kind,
        &["--auth", &slow],
        &[("FLOATLM_AUTH_TIMEOUT", "300ms")],
    )
    .await;
    let c2 = Client::connect(&[&d2.identity], opts("")).await.unwrap();
    let started = Instant::now();
    match c2.checkout("demo").await {
        Err(ClientError::NoLicense {
            reason: NoLicenseReason::DeniedByAuthScript,
            message,
        }) => {
            assert!(message.contains("timed out"), "{message}")
        }
        other => panic!("expected a timeout, got {:?}", other.map(|s| s.lease())),
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    let crash = script(sdir.path(), "crash.sh", "kill -SEGV $$");
    let d3 = demo(kind, &["--auth", &crash], &[]).await;
    let c3 = Client::connect(&[&d3.identity], opts("")).await.unwrap();
    match c3.checkout("demo").await {
        Err(ClientError::NoLicense { message, .. }) => {
            assert!(message.contains("crashed"), "{message}")
        }
        other => panic!(
            "expected a crash denial, got {:?}",
            other.map(|s| s.lease())
        ),
    }

    // A script that cannot be run (removed after start-up) is an incident:
    // the client is not told the script's path or the system's error.
    let gone = script(sdir.path(), "gone.sh", "exit 0");
    let d4 = demo(kind, &["--auth", &gone], &[]).await;
    std::fs::remove_file(&gone).unwrap();
    let c4 = Client::connect(&[&d4.identity], opts("")).await.unwrap();
    match c4.checkout("demo").await {
        Err(ClientError::NoLicense { message, .. }) => {
            assert!(message.contains("incident"), "{message}");
            assert!(
                !message.contains("gone.sh") && !message.contains("No such file"),
                "{message}"
            );
        }
        other => panic!(
            "expected a denial with an incident, got {:?}",
            other.map(|s| s.lease())
        ),
    }
}

#[test]
fn a_non_executable_auth_script_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("auth.sh");
    std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
    let out = std::process::Command::new(testkit::bin())
        .args([
            "serve",
            "--data-dir",
            &dir.path().display().to_string(),
            "--auth",
            &p.display().to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auth_script") && err.contains("--auth") && err.contains("not an executable"),
        "{err}"
    );
}

/// A raw protocol session, for tampering with bytes.
struct Raw {
    http: reqwest::Client,
    addr: String,
    session: String,
    keys: floatlm_protocol::keys::SessionKeys,
}

async fn raw_session(addr: &str, identity: &str) -> Raw {
    let (id, secret) = identity.split_once('@').unwrap().0.split_once(':').unwrap();
    let (hs, hello) = ClientHandshake::start(id, secret.as_bytes(), None).unwrap();
    complete_handshake(addr, hs, hello).await
}

/// Sends a ClientHello and finishes the handshake with the server's answer.
async fn complete_handshake(addr: &str, hs: ClientHandshake, hello: Vec<u8>) -> Raw {
    let http = reqwest::Client::new();
    let reply = http
        .post(format!("http://{addr}{PATH_HANDSHAKE}"))
        .body(hello)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let (keys, payload) = hs.finish(&reply.bytes().await.unwrap()).unwrap();
    Raw {
        http,
        addr: addr.into(),
        session: payload.session,
        keys,
    }
}

impl Raw {
    fn seal(&self, seq: u64, req: &Request) -> Vec<u8> {
        let b = Binding {
            method: "POST",
            path: PATH_REQUEST,
            instance: "raw",
            session: &self.session,
        };
        envelope::seal(
            &self.keys.c2s,
            Direction::ClientToServer,
            seq,
            &b,
            &serde_json::to_vec(req).unwrap(),
        )
    }

    async fn post(&self, body: Vec<u8>, instance: &str) -> (u16, Vec<u8>) {
        let r = self
            .http
            .post(format!("http://{}{PATH_REQUEST}", self.addr))
            .header(HEADER_SESSION, &self.session)
            .header(HEADER_INSTANCE, instance)
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    }

    fn open(&self, body: &[u8]) -> Response {
        let b = Binding {
            method: "POST",
            path: PATH_REQUEST,
            instance: "raw",
            session: &self.session,
        };
        serde_json::from_slice(
            &envelope::open(&self.keys.s2c, Direction::ServerToClient, &b, body)
                .unwrap()
                .1,
        )
        .unwrap()
    }
}

async fn tampered_and_replayed_requests_are_never_acted_on(kind: Kind) {
    let d = demo(kind, &[], &[]).await;
    let watcher = Client::connect(&[&d.identity], opts("")).await.unwrap();
    let raw = raw_session(&d.proc.licensing, &d.identity).await;
    let login = |rid: &str| Request::Login {
        feature: "demo".into(),
        request_id: rid.into(),
        auth: Default::default(),
    };
    let first = raw.seal(0, &login("raw:1"));
    let (status, body) = raw.post(first.clone(), "raw").await;
    assert_eq!(status, 200);
    assert!(matches!(raw.open(&body), Response::Granted { .. }));
    // Replayed: refused, not acted on.
    let (status, body) = raw.post(first.clone(), "raw").await;
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    assert_eq!(used(&watcher).await, 1);
    // Every byte of a fresh request flipped: refused, nothing granted.
    let second = raw.seal(1, &login("raw:2"));
    for i in 0..second.len() {
        let mut t = second.clone();
        t[i] ^= 0x04;
        let (status, _) = raw.post(t, "raw").await;
        assert_ne!(status, 200, "byte {i} flipped was accepted");
    }
    // Bound to the X-LDK-Instance header too.
    assert_ne!(raw.post(second.clone(), "someone-else").await.0, 200);
    assert_eq!(used(&watcher).await, 1);
    // The untouched request still works, once.
    let (status, body) = raw.post(second.clone(), "raw").await;
    assert_eq!(status, 200);
    assert!(matches!(raw.open(&body), Response::Granted { .. }));
    assert_eq!(used(&watcher).await, 2);
    // Garbage and unknown sessions get clear JSON errors.
    let r = reqwest::Client::new()
        .post(format!("http://{}{PATH_REQUEST}", d.proc.licensing))
        .header(HEADER_SESSION, "nope")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "session_unknown"
    );
    let r = reqwest::Client::new()
        .post(format!("http://{}{PATH_HANDSHAKE}", d.proc.licensing))
        .body(vec![9u8; 50])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "unsupported_version"
    );
}

async fn wrong_secret_and_unknown_id_are_indistinguishable(kind: Kind) {
    let d = demo(kind, &[], &[]).await;
    let id = d.identity.split(':').next().unwrap();
    let post = |hello: Vec<u8>| {
        let url = format!("http://{}{PATH_HANDSHAKE}", d.proc.licensing);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .body(hello)
                .send()
                .await
                .unwrap();
            let mut headers: Vec<(String, String)> = r
                .headers()
                .iter()
                .filter(|(k, _)| k.as_str() != "date")
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            headers.sort();
            (
                r.status().as_u16(),
                headers,
                r.bytes().await.unwrap().to_vec(),
            )
        }
    };
    let wrong_secret = post(
        ClientHandshake::start(id, b"definitely-not-the-secret-123456", None)
            .unwrap()
            .1,
    )
    .await;
    let unknown_id = post(
        ClientHandshake::start(
            "ffffffffffffffff",
            b"definitely-not-the-secret-123456",
            None,
        )
        .unwrap()
        .1,
    )
    .await;
    assert_eq!(wrong_secret.0, 401);
    assert_eq!(wrong_secret, unknown_id, "byte-identical answers");
    // A revoked identity is told why, after proving its secret.
    let c = reqwest::Client::new();
    let created: serde_json::Value = c
        .post(format!("http://{}/admin/v1/identities", d.proc.admin))
        .bearer_auth(&d.admin_token)
        .json(&serde_json::json!({"name": "temp"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ident = created["identity_string"].as_str().unwrap();
    let rid = created["identity"]["id"].as_str().unwrap();
    Client::connect(&[ident], opts("")).await.unwrap();
    c.delete(format!("http://{}/admin/v1/identities/{rid}", d.proc.admin))
        .bearer_auth(&d.admin_token)
        .send()
        .await
        .unwrap();
    match Client::connect(&[ident], opts("")).await {
        Err(ClientError::IdentityRefused { reason, .. }) => {
            assert!(reason.contains("revoked"), "{reason}")
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a revoked identity must be refused"),
    }
}

/// The server answers the shipped test vectors' ClientHello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_accepts_the_test_vector_handshake() {
    let t = TestApp::new(Kind::Sqlite).await;
    let v = vectors::shipped().handshake;
    t.app
        .access()
        .import_identity(
            &v.identity_id,
            "vector",
            &floatlm::crypto::Secret::new(v.secret_text.clone()),
        )
        .await
        .unwrap();
    let (lic, _admin, _stop) = testkit::serve_in_process(t.app.clone()).await;
    let (hs, hello) = ClientHandshake::start(
        &v.identity_id,
        v.secret_text.as_bytes(),
        Some(&vectors::CLIENT_EPHEMERAL),
    )
    .unwrap();
    assert_eq!(
        hex::encode(&hello),
        v.client_hello,
        "the client side of the vectors"
    );
    let raw = complete_handshake(&lic, hs, hello).await;
    let (status, body) = raw
        .post(
            raw.seal(
                vectors::shipped().envelope("request").seq,
                &serde_json::from_str(vectors::REQUEST_JSON).unwrap(),
            ),
            "raw",
        )
        .await;
    assert_eq!(status, 200);
    assert!(matches!(raw.open(&body), Response::Info { .. }));
}

/// Two instances on one MariaDB database: kill the one a handle uses; the
/// handle keeps its lease through the other, with no second login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_the_same_lease() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (pubkey, lic) = testkit::cli_license(dir.path(), "F", "cad", 2);
    let extra = ["--vendor-key", pubkey.as_str(), "--lease-ttl", "5s"];
    let start =
        |name: &str| testkit::cluster_instance(dir.path(), &db, name, "127.0.0.1:0", &extra, &[]);
    let mut servers = [start("a"), start("b")];
    let admin = testkit::admin_cli;
    admin(&servers[0], &["apply", &lic]);
    let out = admin(&servers[0], &["identity", "create", "--name", "ha"]);
    let cred = testkit::created_credential(&out);
    let ids = [
        format!("{cred}@{}", servers[0].licensing),
        format!("{cred}@{}", servers[1].licensing),
    ];
    let client = Client::connect(&ids, opts("")).await.unwrap();
    let seat = client.checkout("cad").await.unwrap();
    let lease = seat.lease();
    let logins = client.session_stats().handshakes;
    // Kill whichever instance won the race for this client.
    let victim = client
        .server_status()
        .iter()
        .position(|s| s.active)
        .unwrap();
    let survivor = 1 - victim;
    servers[victim].signal(libc::SIGKILL);
    servers[victim].wait_exit(Duration::from_secs(10)).unwrap();
    let killed_at = Instant::now();
    // The next heartbeats go through the other instance.
    wait_for(
        "the handle to move to the surviving instance",
        Duration::from_secs(20),
        || async {
            let st = client.server_status();
            (st[survivor].active && killed_at.elapsed() > Duration::from_secs(6)).then_some(())
        },
    )
    .await;
    assert_eq!(
        seat.state(),
        HandleState::Held,
        "{:?}",
        client.server_status()
    );
    assert_eq!(seat.lease(), lease, "same lease");
    let stats = client.session_stats();
    assert_eq!(stats.handshakes, logins, "no second login: {stats:?}");
    assert!(
        stats.resumes >= 1,
        "the ticket resumed the session: {stats:?}"
    );
    let leases: serde_json::Value =
        serde_json::from_str(&admin(&servers[survivor], &["--json", "lease", "list"])).unwrap();
    let live = leases["leases"].as_array().unwrap();
    assert_eq!(live.len(), 1, "{leases}");
    assert_eq!(live[0]["lease"], lease.as_str());
    // Another client fills the other seat; the third is refused: never more than N.
    let other = Client::connect(&[&ids[survivor]], opts("")).await.unwrap();
    let _s2 = other.checkout("cad").await.unwrap();
    assert!(matches!(
        other.checkout("cad").await,
        Err(ClientError::NoLicense { .. })
    ));
    assert!(matches!(
        client.server_status()[victim].state,
        floatlm_client::ServerState::Failing { .. }
    ));
}

testkit::both_backends!(
    seats_release_and_heartbeats,
    a_vanished_client_loses_its_seat_after_the_ttl,
    auth_script_allows_denies_times_out_and_crashes,
    tampered_and_replayed_requests_are_never_acted_on,
    wrong_secret_and_unknown_id_are_indistinguishable,
);

/// Past `max_sessions` new handshakes get 503 with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_table_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let vendor = floatlm::domain::license::VendorSigningKey::generate();
    let mut l = testkit::layers(dir.path(), None, MASTER_KEY_1, &vendor);
    l.flag("max_sessions", Some("2"));
    let app = floatlm::app::App::start(l.build().unwrap()).await.unwrap();
    let (_, ident) = app.access().create_identity("x", None).await.unwrap();
    let (lic, _, _stop) = testkit::serve_in_process(app.clone()).await;
    let ident = format!("{}:{}@{lic}", ident.id, ident.secret.expose());
    let _a = Client::connect(&[&ident], opts("")).await.unwrap();
    let _b = Client::connect(&[&ident], opts("")).await.unwrap();
    // A session counts once its first request confirmed it.
    assert_eq!(app.admission().session_counts().active, 0);
    _a.query(&[]).await.unwrap();
    _b.query(&[]).await.unwrap();
    assert_eq!(app.admission().session_counts().active, 2);
    let (_, hello) = ClientHandshake::start(
        ident.split(':').next().unwrap(),
        b"whatever-secret-here",
        None,
    )
    .unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{lic}{PATH_HANDSHAKE}"))
        .body(hello)
        .send()
        .await
        .unwrap();
    // 429, not 503: a full instance is healthy, and proxies must not take it
    // out of the pool for it (nginx/README.md).
    assert_eq!(r.status(), 429);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "too_many_sessions");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("maximum of 2 sessions"),
        "{v}"
    );
    match Client::connect(&[&ident], opts("")).await {
        Err(ClientError::Unreachable(m)) => assert!(m.contains("maximum"), "{m}"),
        other => panic!("expected 429 to surface, got {:?}", other.err()),
    }
}

/// Issue 13: a recorded ClientHello or ResumeHello replayed 1,000 times
/// opens no session that counts against `max_sessions` and earns no
/// resumption ticket; real clients still get every session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_hellos_cost_no_session_and_no_ticket() {
    use floatlm_protocol::messages::SealedResponse;
    use floatlm_protocol::PATH_RESUME;
    const REPLAYS: usize = 1000;
    const MAX: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let vendor = floatlm::domain::license::VendorSigningKey::generate();
    let mut l = testkit::layers(dir.path(), None, MASTER_KEY_1, &vendor);
    l.flag("max_sessions", Some(&MAX.to_string()));
    let app = floatlm::app::App::start(l.build().unwrap()).await.unwrap();
    let (_, ident) = app.access().create_identity("x", None).await.unwrap();
    let (lic, _, _stop) = testkit::serve_in_process(app.clone()).await;
    let (id, secret) = (ident.id.clone(), ident.secret.expose().to_string());
    let http = reqwest::Client::new();
    let post = |path: &'static str, body: Vec<u8>| {
        let (http, url) = (http.clone(), format!("http://{lic}{path}"));
        async move {
            let r = http.post(url).body(body).send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        }
    };
    // Sends `hello` REPLAYS times, 16 at a time; every answer must be 200.
    let replay = |path: &'static str, hello: Vec<u8>| async move {
        let mut answers = Vec::new();
        while answers.len() < REPLAYS {
            let n = (REPLAYS - answers.len()).min(16);
            let batch = (0..n).map(|_| post(path, hello.clone()));
            for (status, body) in futures_join(batch).await {
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                answers.push(body);
            }
        }
        answers
    };

    // A real session first: confirmed, its first answer carries a ticket.
    let eph = [7u8; 32];
    let (hs, hello) = ClientHandshake::start(&id, secret.as_bytes(), Some(&eph)).unwrap();
    let (status, body) = post(PATH_HANDSHAKE, hello.clone()).await;
    assert_eq!(status, 200);
    let (keys, payload) = hs.finish(&body).unwrap();
    assert!(payload.resume.is_none(), "no ticket in a ServerHello");
    let real = Raw {
        http: http.clone(),
        addr: lic.clone(),
        session: payload.session.clone(),
        keys,
    };
    let (status, body) = real
        .post(real.seal(0, &Request::Info { features: vec![] }), "raw")
        .await;
    assert_eq!(status, 200);
    let first: SealedResponse = serde_json::from_slice(
        &envelope::open(
            &real.keys.s2c,
            Direction::ServerToClient,
            &Binding {
                method: "POST",
                path: PATH_REQUEST,
                instance: "raw",
                session: &real.session,
            },
            &body,
        )
        .unwrap()
        .1,
    )
    .unwrap();
    let grant = first.resume.expect("the first answer carries the ticket");
    let c = app.admission().session_counts();
    assert_eq!((c.active, c.tickets_issued), (1, 1), "{c:?}");

    // The recorded ClientHello, 1,000 times: each is answered (the server
    // cannot tell), none counts, none earns a ticket.
    let answers = replay(PATH_HANDSHAKE, hello).await;
    let c = app.admission().session_counts();
    assert_eq!((c.active, c.tickets_issued), (1, 1), "{c:?}");
    assert_eq!(c.hellos, 1 + REPLAYS as u64, "{c:?}");
    assert!(c.pending <= floatlm::sessions::MAX_PENDING, "{c:?}");
    // Even the recording client (who alone can read them) finds no ticket.
    for body in answers.iter().take(5) {
        let (hs, _) = ClientHandshake::start(&id, secret.as_bytes(), Some(&eph)).unwrap();
        assert!(hs.finish(body).unwrap().1.resume.is_none());
    }

    // The same for a recorded ResumeHello.
    let ticket = hex::decode(&grant.ticket).unwrap();
    let rsecret = hex::decode(&grant.secret).unwrap();
    let (_, resume_hello) = ClientHandshake::resume(&ticket, &rsecret, Some(&eph)).unwrap();
    let answers = replay(PATH_RESUME, resume_hello).await;
    for body in answers.iter().take(5) {
        let (hs, _) = ClientHandshake::resume(&ticket, &rsecret, Some(&eph)).unwrap();
        assert!(hs.finish(body).unwrap().1.resume.is_none());
    }
    let c = app.admission().session_counts();
    assert_eq!((c.active, c.tickets_issued, c.resumes), (1, 1, 0), "{c:?}");
    assert_eq!(c.hellos, 1 + 2 * REPLAYS as u64, "{c:?}");

    // max_sessions real clients still get their sessions (the first one
    // holds one already), and each its ticket.
    let mut clients = Vec::new();
    for _ in 1..MAX {
        let cl = Client::connect(&[format!("{id}:{secret}@{lic}")], opts(""))
            .await
            .unwrap();
        cl.query(&[]).await.unwrap();
        clients.push(cl);
    }
    let c = app.admission().session_counts();
    assert_eq!((c.active, c.tickets_issued), (MAX, MAX as u64), "{c:?}");
    // Full now: one more is refused.
    match Client::connect(&[format!("{id}:{secret}@{lic}")], opts("")).await {
        Err(ClientError::Unreachable(m)) => assert!(m.contains("maximum"), "{m}"),
        other => panic!("expected too_many_sessions, got {:?}", other.err()),
    }
}

/// Runs futures concurrently, answers in order.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
