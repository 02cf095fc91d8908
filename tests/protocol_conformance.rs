//! docs/protocol.md against running servers, so the two cannot drift.
//!
//! The doc's status tables (columns `situation | HTTP status | code`, under
//! the heading of their endpoint) are read row by row. Every row names a
//! scenario here that provokes it against a real server; the answer must
//! carry the row's status and code. A row with no scenario fails the test
//! (a new row needs a new scenario), and so does a scenario whose row is
//! gone (a server behaviour the doc no longer mentions).
//!
//! The servers are real HTTP servers in this process on one MariaDB
//! database: a plain one, one full (`max_sessions` = 1), one draining, and
//! one whose database connection runs through a proxy the test cuts.

use floatlm::app::App;
use floatlm_protocol::envelope::{self, Binding, Direction};
use floatlm_protocol::handshake::{ClientHandshake, ResumeGrant, ServerHelloPayload};
use floatlm_protocol::keys::SessionKeys;
use floatlm_protocol::messages::{Request, SealedResponse};
use floatlm_protocol::{
    HEADER_INSTANCE, HEADER_SESSION, PATH_HANDSHAKE, PATH_REQUEST, PATH_RESUME,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::{wait_for, TestDb, MASTER_KEY_1};

const DOC: &str = include_str!("../docs/protocol.md");
const HEADER: [&str; 3] = ["situation", "HTTP status", "code"];
const INSTANCE: &str = "conformance-client";

// ------------------------------------------------------------- the doc

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    /// The endpoint path of the section the table is in.
    endpoint: String,
    situation: String,
    status: u16,
    /// None for "—" (a success, nothing to name).
    code: Option<String>,
}

/// Splits a Markdown table line into cells (`\|` is a pipe inside a cell).
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.iter().map(|c| c.trim().to_string()).collect()
}

/// Every row of every status table in `doc`.
fn status_rows(doc: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut endpoint: Option<String> = None;
    let mut lines = doc.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("## ") {
            // "## Handshake: `POST /sentinel/ldk/v1/handshake`"
            endpoint = line
                .split('`')
                .nth(1)
                .and_then(|m| m.strip_prefix("POST "))
                .map(str::to_string);
            continue;
        }
        if !line.starts_with('|') || cells(line) != HEADER {
            continue;
        }
        let endpoint = endpoint
            .clone()
            .unwrap_or_else(|| panic!("a status table outside an endpoint section: {line}"));
        let separator = lines.next().unwrap_or_default();
        assert!(
            separator.starts_with("|--") || separator.starts_with("|---"),
            "{separator}"
        );
        while let Some(row) = lines.next_if(|l| l.starts_with('|')) {
            let c = cells(row);
            assert_eq!(c.len(), 3, "a status row has three cells: {row}");
            let status = c[1]
                .parse()
                .unwrap_or_else(|_| panic!("not an HTTP status: {row}"));
            let code = if c[2].starts_with('—') {
                None
            } else {
                let code = c[2].trim_matches('`');
                assert!(
                    !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "the code cell is `code` or —: {row}"
                );
                Some(code.to_string())
            };
            rows.push(Row {
                endpoint: endpoint.clone(),
                situation: c[0].clone(),
                status,
                code,
            });
        }
    }
    rows
}

#[test]
fn the_status_tables_parse() {
    let rows = status_rows(DOC);
    for path in [PATH_HANDSHAKE, PATH_RESUME, PATH_REQUEST] {
        let n = rows.iter().filter(|r| r.endpoint == path).count();
        assert!(n >= 5, "{path}: {n} rows");
    }
    assert!(rows.iter().any(|r| r.status == 200 && r.code.is_none()));
    let sample = "| a \\| b | 409 | `replay` |";
    assert_eq!(cells(sample), ["a | b", "409", "`replay`"]);
}

// ----------------------------------------------------------- scenarios

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    HelloOk,
    HelloRefused,
    HelloTooLarge,
    HelloVersion,
    HelloFraming,
    HelloMessage1Length,
    HelloAuthFailed,
    HelloDraining,
    HelloFull,
    HelloDatabaseDown,
    ResumeOk,
    ResumeTooLarge,
    ResumeVersion,
    ResumeFraming,
    ResumeMessage1Length,
    ResumeTicketRefused,
    ResumeAuthFailed,
    ResumeDraining,
    ResumeFull,
    ResumeDatabaseDown,
    RequestOk,
    RequestDraining,
    RequestNoSessionHeader,
    RequestSessionUnknown,
    RequestTooLarge,
    RequestTooShort,
    RequestVersion,
    RequestReplay,
    RequestBadEnvelope,
    RequestFull,
}

/// Each row of the doc, by endpoint and situation, and its scenario.
const SCENARIOS: &[(&str, &str, Scenario)] = {
    use Scenario::*;
    &[
        (PATH_HANDSHAKE, "the identity is usable and the secret right", HelloOk),
        (PATH_HANDSHAKE, "the identity is revoked or expired and the secret right", HelloRefused),
        (PATH_HANDSHAKE, "the body is over 4096 bytes", HelloTooLarge),
        (PATH_HANDSHAKE, "the first byte is not `0x01`", HelloVersion),
        (PATH_HANDSHAKE, "the framing is cut short, or the ID is empty, over 64 bytes or has other characters", HelloFraming),
        (PATH_HANDSHAKE, "Noise message 1 is not exactly 48 bytes (a message 1 with a payload is longer)", HelloMessage1Length),
        (PATH_HANDSHAKE, "the ID is unknown, or the secret wrong", HelloAuthFailed),
        (PATH_HANDSHAKE, "this instance is draining", HelloDraining),
        (PATH_HANDSHAKE, "this instance holds `max_sessions` live sessions in use", HelloFull),
        (PATH_HANDSHAKE, "the database does not answer and the ID is not in the identity cache", HelloDatabaseDown),
        (PATH_RESUME, "the ticket is valid and the hello made with its secret", ResumeOk),
        (PATH_RESUME, "the body is over 4096 bytes", ResumeTooLarge),
        (PATH_RESUME, "the first byte is not `0x01`", ResumeVersion),
        (PATH_RESUME, "the framing is cut short, or the ticket length is 0 or over 1024", ResumeFraming),
        (PATH_RESUME, "Noise message 1 is not exactly 48 bytes", ResumeMessage1Length),
        (PATH_RESUME, "the ticket is expired, altered, sealed with a key that is gone, or its identity was revoked, expired or deleted", ResumeTicketRefused),
        (PATH_RESUME, "the ticket opened but the hello was not made with its secret", ResumeAuthFailed),
        (PATH_RESUME, "this instance is draining", ResumeDraining),
        (PATH_RESUME, "this instance holds `max_sessions` live sessions in use", ResumeFull),
        (PATH_RESUME, "the database does not answer (also when the ticket names a key newer than this instance has loaded: the ticket may be good)", ResumeDatabaseDown),
        (PATH_REQUEST, "a valid envelope of a live or pending session", RequestOk),
        (PATH_REQUEST, "a valid envelope while this instance is draining", RequestDraining),
        (PATH_REQUEST, "there is no `X-LDK-Session` header", RequestNoSessionHeader),
        (PATH_REQUEST, "the session is unknown here: idle past `session_idle`, dropped while pending, ended after an identity refusal, named by a refused ServerHello, or never here", RequestSessionUnknown),
        (PATH_REQUEST, "the envelope is over 64 KiB", RequestTooLarge),
        (PATH_REQUEST, "the envelope is shorter than 25 bytes", RequestTooShort),
        (PATH_REQUEST, "the first byte is not `0x01`", RequestVersion),
        (PATH_REQUEST, "the sequence number was used already, is more than 127 below the highest used, or is 2^64 − 1", RequestReplay),
        (PATH_REQUEST, "the envelope does not open: altered, sealed with other keys, or bound to another method, path, `X-LDK-Instance`, session or sequence number", RequestBadEnvelope),
        (PATH_REQUEST, "the first envelope of a pending session finds `max_sessions` live sessions in use", RequestFull),
    ]
};

fn normalized(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Pairs every row with its scenario; the rows and scenarios that pair
/// with nothing, as readable lines.
fn plan(rows: &[Row]) -> (Vec<(Row, Scenario)>, Vec<String>) {
    let mut planned = Vec::new();
    let mut problems = Vec::new();
    for row in rows {
        match SCENARIOS
            .iter()
            .find(|(e, s, _)| *e == row.endpoint && normalized(s) == normalized(&row.situation))
        {
            Some((_, _, sc)) => planned.push((row.clone(), *sc)),
            None => problems.push(format!(
                "docs/protocol.md row without a scenario in tests/protocol_conformance.rs: {} | {} | {} | {:?}",
                row.endpoint, row.situation, row.status, row.code
            )),
        }
    }
    for (e, s, sc) in SCENARIOS {
        if !planned.iter().any(|(_, p)| p == sc) {
            problems.push(format!(
                "scenario {sc:?} ({e}: {s}) has no row in docs/protocol.md: document it or remove it"
            ));
        }
    }
    (planned, problems)
}

#[test]
fn every_row_has_a_scenario_and_every_scenario_a_row() {
    let (_, problems) = plan(&status_rows(DOC));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn an_unknown_row_is_refused() {
    let mut rows = status_rows(DOC);
    rows.push(Row {
        endpoint: PATH_REQUEST.into(),
        situation: "a situation nobody wrote a scenario for".into(),
        status: 418,
        code: Some("teapot".into()),
    });
    rows.retain(|r| !r.situation.starts_with("the envelope is over"));
    let (_, problems) = plan(&rows);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].contains("nobody wrote"), "{}", problems[0]);
    assert!(problems[1].contains("RequestTooLarge"), "{}", problems[1]);
}

// ------------------------------------------------------------- the wire

/// An answer, by what the doc's tables name: status and `error` code.
#[derive(Debug)]
struct Answer {
    status: u16,
    code: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

async fn post(addr: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap().to_vec();
    let code = (status != 200).then(|| {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
            panic!(
                "{path} answered {status} without a JSON body: {}",
                String::from_utf8_lossy(&body)
            )
        });
        v["error"].as_str().unwrap_or_default().to_string()
    });
    Answer { status, code, body }
}

/// An identity's `ID` and `SECRET`.
#[derive(Clone)]
struct Ident {
    id: String,
    secret: String,
}

/// A protocol session opened by this test.
struct Session {
    addr: String,
    id: String,
    keys: SessionKeys,
}

impl Session {
    fn binding<'a>(&'a self, instance: &'a str) -> Binding<'a> {
        Binding {
            method: "POST",
            path: PATH_REQUEST,
            instance,
            session: &self.id,
        }
    }

    fn seal(&self, seq: u64, req: &Request) -> Vec<u8> {
        envelope::seal(
            &self.keys.c2s,
            Direction::ClientToServer,
            seq,
            &self.binding(INSTANCE),
            &serde_json::to_vec(req).unwrap(),
        )
    }

    async fn post(&self, body: Vec<u8>, instance: &str) -> Answer {
        post(
            &self.addr,
            PATH_REQUEST,
            &[(HEADER_SESSION, &self.id), (HEADER_INSTANCE, instance)],
            body,
        )
        .await
    }

    fn open(&self, a: &Answer) -> SealedResponse {
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let (_, pt) = envelope::open(
            &self.keys.s2c,
            Direction::ServerToClient,
            &self.binding(INSTANCE),
            &a.body,
        )
        .expect("the response opens");
        serde_json::from_slice(&pt).unwrap()
    }

    /// An `info` request numbered `seq`: the answer and, on 200, its contents.
    async fn info(&self, seq: u64) -> (Answer, Option<SealedResponse>) {
        let a = self
            .post(
                self.seal(seq, &Request::Info { features: vec![] }),
                INSTANCE,
            )
            .await;
        let sealed = (a.status == 200).then(|| self.open(&a));
        (a, sealed)
    }
}

fn hello(ident: &Ident) -> (ClientHandshake, Vec<u8>) {
    ClientHandshake::start(&ident.id, ident.secret.as_bytes(), None).unwrap()
}

/// Finishes a 200 ServerHello.
fn finish(hs: ClientHandshake, addr: &str, a: &Answer) -> (Session, ServerHelloPayload) {
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let (keys, payload) = hs.finish(&a.body).expect("the ServerHello finishes");
    (
        Session {
            addr: addr.into(),
            id: payload.session.clone(),
            keys,
        },
        payload,
    )
}

async fn handshake(addr: &str, ident: &Ident) -> (Session, ServerHelloPayload) {
    let (hs, body) = hello(ident);
    let a = post(addr, PATH_HANDSHAKE, &[], body).await;
    finish(hs, addr, &a)
}

/// A session confirmed by its first request, and the ticket that request earned.
async fn confirmed(addr: &str, ident: &Ident) -> (Session, ResumeGrant) {
    let (s, _) = handshake(addr, ident).await;
    let (_, sealed) = s.info(0).await;
    let ticket = sealed
        .unwrap()
        .resume
        .expect("the first answer carries a ticket");
    (s, ticket)
}

fn resume_hello(grant: &ResumeGrant) -> (ClientHandshake, Vec<u8>) {
    let ticket = hex::decode(&grant.ticket).unwrap();
    let secret = hex::decode(&grant.secret).unwrap();
    ClientHandshake::resume(&ticket, &secret, None).unwrap()
}

/// Noise message 1 starts after this many bytes of a ClientHello.
fn message_1_at(ident: &Ident) -> usize {
    2 + ident.id.len()
}

// ------------------------------------------------------------ servers

struct Server {
    app: Arc<App>,
    addr: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn server(db_url: &str, max_sessions: Option<usize>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let vendor = floatlm::domain::license::VendorSigningKey::generate();
    let mut l = testkit::layers(dir.path(), Some(db_url), MASTER_KEY_1, &vendor);
    l.flag("drain_delay", Some("0s"));
    if let Some(n) = max_sessions {
        l.flag("max_sessions", Some(n));
    }
    let app = App::start(l.build().unwrap()).await.unwrap();
    let (addr, _, stop) = testkit::serve_in_process(app.clone()).await;
    Server {
        app,
        addr,
        _stop: stop,
        _dir: dir,
    }
}

/// A TCP proxy to the database that the test can cut: its connections are
/// dropped and new ones refused, as when the database host goes away.
struct Proxy {
    addr: String,
    accept: tokio::task::AbortHandle,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let links = Arc::new(Mutex::new(Vec::new()));
        let held = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                held.lock().unwrap().push(link.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            addr,
            accept,
            links,
        }
    }

    fn cut(&self) {
        self.accept.abort();
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

/// `mysql://user@host:port/db` → (`host:port`, the URL through `via`).
fn through(url: &str, via: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, rest) = match rest.rsplit_once('@') {
        Some((user, rest)) => (format!("{user}@"), rest),
        None => (String::new(), rest),
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    (host.to_string(), format!("{scheme}://{user}{via}/{path}"))
}

/// Everything the scenarios use, set up before the first one runs.
struct Ctx {
    main: Server,
    usable: Ident,
    revoked: Ident,
    expired: Ident,
    /// A ticket earned on `main`, and a ticket whose identity was revoked since.
    ticket: ResumeGrant,
    revoked_ticket: ResumeGrant,
    full: Server,
    /// A pending session on `full`, answered before it filled up.
    full_pending: Session,
    draining: Server,
    /// A live session on `draining`, from before it began to drain.
    draining_session: Session,
    down: Server,
    /// A ticket `down` issued (its key is loaded) before its database went away.
    down_ticket: ResumeGrant,
    _proxy: Proxy,
    _db: TestDb,
}

impl Ctx {
    async fn new() -> Ctx {
        let db = TestDb::new().await;
        let main = server(&db.url, None).await;
        let create = |name: &'static str, expires: Option<chrono::DateTime<chrono::Utc>>| {
            let app = main.app.clone();
            async move {
                let (_, s) = app.access().create_identity(name, expires).await.unwrap();
                Ident {
                    id: s.id.clone(),
                    secret: s.secret.expose().to_string(),
                }
            }
        };
        let usable = create("usable", None).await;
        let revoked = create("revoked", None).await;
        let expired = create(
            "expired",
            Some(chrono::Utc::now() - chrono::Duration::days(1)),
        )
        .await;
        let revoked_later = create("revoked-later", None).await;
        main.app
            .access()
            .revoke_identity(&revoked.id)
            .await
            .unwrap();
        let (_, ticket) = confirmed(&main.addr, &usable).await;
        let (_, revoked_ticket) = confirmed(&main.addr, &revoked_later).await;
        main.app
            .access()
            .revoke_identity(&revoked_later.id)
            .await
            .unwrap();

        let full = server(&db.url, Some(1)).await;
        let (full_pending, _) = handshake(&full.addr, &usable).await;
        confirmed(&full.addr, &usable).await;

        let draining = server(&db.url, None).await;
        let (draining_session, _) = confirmed(&draining.addr, &usable).await;
        draining.app.cluster().set_draining();

        let (upstream, _) = through(&db.url, "unused");
        let proxy = Proxy::start(upstream).await;
        let (_, via_proxy) = through(&db.url, &proxy.addr);
        let down = server(&via_proxy, None).await;
        let (_, down_ticket) = confirmed(&down.addr, &usable).await;
        proxy.cut();
        let healthz = format!("http://{}/sentinel/ldk/v1/healthz", down.addr);
        wait_for(
            "the instance behind the cut proxy to see its database gone",
            Duration::from_secs(20),
            || {
                let url = healthz.clone();
                async move {
                    let r = reqwest::get(url).await.ok()?;
                    (r.status() == 503).then_some(())
                }
            },
        )
        .await;

        Ctx {
            main,
            usable,
            revoked,
            expired,
            ticket,
            revoked_ticket,
            full,
            full_pending,
            draining,
            draining_session,
            down,
            down_ticket,
            _proxy: proxy,
            _db: db,
        }
    }

    /// Provokes `sc`; every answer it gets must match the scenario's row.
    async fn run(&self, sc: Scenario) -> Vec<Answer> {
        use Scenario::*;
        let main = self.main.addr.as_str();
        match sc {
            HelloOk => {
                let (hs, body) = hello(&self.usable);
                let first = post(main, PATH_HANDSHAKE, &[], body.clone()).await;
                // Posted twice: answered twice, two sessions.
                let again = post(main, PATH_HANDSHAKE, &[], body).await;
                let (s, payload) = finish(hs, main, &first);
                assert!(payload.refused.is_none() && payload.resume.is_none());
                assert_eq!(payload.session.len(), 32);
                assert!(payload.session.bytes().all(|b| b.is_ascii_hexdigit()));
                assert_eq!(payload.instance, self.main.app.instance_id());
                assert_eq!(again.status, 200);
                assert_ne!(first.body, again.body, "a second, different session");
                let (a, sealed) = s.info(0).await;
                assert!(sealed.unwrap().resume.is_some());
                vec![first, again, a]
            }
            HelloRefused => {
                let mut out = Vec::new();
                for (ident, why) in [(&self.revoked, "revoked"), (&self.expired, "expired")] {
                    let (hs, body) = hello(ident);
                    let a = post(main, PATH_HANDSHAKE, &[], body).await;
                    let (s, payload) = finish(hs, main, &a);
                    let reason = payload.refused.expect("refused");
                    assert!(reason.contains(why), "{reason}");
                    // The session it names does not exist.
                    let (unknown, _) = s.info(0).await;
                    assert_eq!(unknown.code.as_deref(), Some("session_unknown"));
                    out.push(a);
                }
                out
            }
            HelloTooLarge => {
                let mut body = vec![1u8; 4097];
                body[1] = 16;
                vec![post(main, PATH_HANDSHAKE, &[], body).await]
            }
            HelloVersion => {
                let (_, mut body) = hello(&self.usable);
                body[0] = 2;
                vec![post(main, PATH_HANDSHAKE, &[], body).await]
            }
            HelloFraming => {
                let m1 = [9u8; 48];
                let id = |n: u8, id: &[u8]| [&[1u8, n][..], id, &m1].concat();
                let mut out = Vec::new();
                for body in [
                    vec![],
                    vec![1],
                    vec![1, 16, b'0', b'1'],
                    id(0, b""),
                    id(65, &[b'a'; 65]),
                    id(3, b"a!b"),
                ] {
                    out.push(post(main, PATH_HANDSHAKE, &[], body).await);
                }
                out
            }
            HelloMessage1Length => {
                let (_, body) = hello(&self.usable);
                let at = message_1_at(&self.usable);
                let mut out = Vec::new();
                for len in [43, 32, 47, 49] {
                    let mut b = body[..at].to_vec();
                    b.extend(body[at..].iter().copied().cycle().take(len));
                    out.push(post(main, PATH_HANDSHAKE, &[], b).await);
                }
                // A real message 1 of the right PSK that carries 5 bytes.
                let psk = floatlm_protocol::keys::derive_psk(
                    self.usable.secret.as_bytes(),
                    &self.usable.id,
                );
                let prologue = format!("floatlm/1 {}", self.usable.id);
                let mut noise =
                    snow::Builder::new(floatlm_protocol::NOISE_PATTERN.parse().unwrap())
                        .psk(0, &psk)
                        .prologue(prologue.as_bytes())
                        .build_initiator()
                        .unwrap();
                let mut m1 = vec![0u8; 128];
                let n = noise.write_message(b"hello", &mut m1).unwrap();
                assert_eq!(n, 53);
                let b = [&body[..at], &m1[..n]].concat();
                out.push(post(main, PATH_HANDSHAKE, &[], b).await);
                out
            }
            HelloAuthFailed => {
                let wrong = Ident {
                    secret: "definitely-not-the-secret-0123456789".into(),
                    ..self.usable.clone()
                };
                let unknown = Ident {
                    id: "ffffffffffffffff".into(),
                    ..wrong.clone()
                };
                let a = post(main, PATH_HANDSHAKE, &[], hello(&wrong).1).await;
                let b = post(main, PATH_HANDSHAKE, &[], hello(&unknown).1).await;
                assert_eq!(a.body, b.body, "unknown id and wrong secret look the same");
                assert_eq!(
                    a.json()["message"],
                    "authentication failed: unknown identity or wrong secret"
                );
                vec![a, b]
            }
            HelloDraining => {
                vec![
                    post(
                        &self.draining.addr,
                        PATH_HANDSHAKE,
                        &[],
                        hello(&self.usable).1,
                    )
                    .await,
                ]
            }
            HelloFull => {
                vec![post(&self.full.addr, PATH_HANDSHAKE, &[], hello(&self.usable).1).await]
            }
            HelloDatabaseDown => {
                // Never asked on this instance, so not cached.
                let unknown = Ident {
                    id: floatlm::crypto::random_hex(8),
                    secret: self.usable.secret.clone(),
                };
                vec![post(&self.down.addr, PATH_HANDSHAKE, &[], hello(&unknown).1).await]
            }
            ResumeOk => {
                let (old, _) = confirmed(main, &self.usable).await;
                let (hs, body) = resume_hello(&self.ticket);
                let a = post(main, PATH_RESUME, &[], body).await;
                let (s, payload) = finish(hs, main, &a);
                assert!(payload.refused.is_none());
                assert_ne!(s.id, old.id);
                let (b, sealed) = s.info(0).await;
                let newer = sealed.unwrap().resume.expect("a new ticket");
                assert_ne!(newer.ticket, self.ticket.ticket);
                // The old session and the older ticket stay valid.
                let (c, _) = old.info(1).await;
                let (hs, body) = resume_hello(&self.ticket);
                let d = post(main, PATH_RESUME, &[], body).await;
                finish(hs, main, &d);
                vec![a, b, c, d]
            }
            ResumeTooLarge => {
                let mut body = vec![1u8; 4097];
                body[1] = 0;
                vec![post(main, PATH_RESUME, &[], body).await]
            }
            ResumeVersion => {
                let (_, mut body) = resume_hello(&self.ticket);
                body[0] = 0;
                vec![post(main, PATH_RESUME, &[], body).await]
            }
            ResumeFraming => {
                let m1 = [9u8; 48];
                let mut out = Vec::new();
                for body in [
                    vec![1],
                    vec![1, 0],
                    [&[1u8, 0, 0][..], &m1].concat(),
                    [&[1u8, 4, 1][..], &[7u8; 1025], &m1].concat(),
                    [&[1u8, 0, 10][..], &[7u8; 5]].concat(),
                ] {
                    out.push(post(main, PATH_RESUME, &[], body).await);
                }
                out
            }
            ResumeMessage1Length => {
                let (_, body) = resume_hello(&self.ticket);
                let mut out = Vec::new();
                for b in [body[..body.len() - 1].to_vec(), [&body[..], &[0]].concat()] {
                    out.push(post(main, PATH_RESUME, &[], b).await);
                }
                out
            }
            ResumeTicketRefused => {
                let mut altered = hex::decode(&self.ticket.ticket).unwrap();
                let at = altered.len() / 2;
                altered[at] ^= 0x01;
                let secret = hex::decode(&self.ticket.secret).unwrap();
                let (_, body) = ClientHandshake::resume(&altered, &secret, None).unwrap();
                let a = post(main, PATH_RESUME, &[], body).await;
                let b = post(main, PATH_RESUME, &[], resume_hello(&self.revoked_ticket).1).await;
                vec![a, b]
            }
            ResumeAuthFailed => {
                let ticket = hex::decode(&self.ticket.ticket).unwrap();
                let (_, body) = ClientHandshake::resume(&ticket, &[0x55; 32], None).unwrap();
                vec![post(main, PATH_RESUME, &[], body).await]
            }
            ResumeDraining => {
                vec![
                    post(
                        &self.draining.addr,
                        PATH_RESUME,
                        &[],
                        resume_hello(&self.ticket).1,
                    )
                    .await,
                ]
            }
            ResumeFull => {
                vec![
                    post(
                        &self.full.addr,
                        PATH_RESUME,
                        &[],
                        resume_hello(&self.ticket).1,
                    )
                    .await,
                ]
            }
            ResumeDatabaseDown => {
                // A ticket under a key id newer than any loaded (another
                // instance's new period): it cannot be looked up, so it is
                // not refused either.
                let mut newer = hex::decode(&self.down_ticket.ticket).unwrap();
                let now = chrono::Utc::now().timestamp() as u64;
                newer[..8].copy_from_slice(&now.to_be_bytes());
                let secret = hex::decode(&self.down_ticket.secret).unwrap();
                let newer = ClientHandshake::resume(&newer, &secret, None).unwrap().1;
                vec![
                    post(
                        &self.down.addr,
                        PATH_RESUME,
                        &[],
                        resume_hello(&self.down_ticket).1,
                    )
                    .await,
                    post(&self.down.addr, PATH_RESUME, &[], newer).await,
                ]
            }
            RequestOk => {
                let (s, _) = handshake(main, &self.usable).await;
                let (pending, _) = s.info(0).await;
                let (live, sealed) = s.info(1).await;
                assert!(sealed.unwrap().resume.is_none(), "one ticket per session");
                vec![pending, live]
            }
            RequestDraining => vec![self.draining_session.info(1).await.0],
            RequestNoSessionHeader => {
                let (s, _) = handshake(main, &self.usable).await;
                let body = s.seal(0, &Request::Info { features: vec![] });
                vec![post(main, PATH_REQUEST, &[(HEADER_INSTANCE, INSTANCE)], body).await]
            }
            RequestSessionUnknown => {
                let (s, _) = handshake(main, &self.usable).await;
                let stranger = Session {
                    id: floatlm::crypto::random_hex(16),
                    addr: s.addr.clone(),
                    keys: s.keys.clone(),
                };
                let a = stranger.info(0).await.0;
                let message = a.json()["message"].as_str().unwrap_or_default().to_string();
                assert!(
                    message.contains("resume") && message.contains("handshake"),
                    "session_unknown says what to do as the doc does: {message}"
                );
                vec![a]
            }
            RequestTooLarge => {
                let (s, _) = handshake(main, &self.usable).await;
                let mut body = s.seal(0, &Request::Info { features: vec![] });
                body.resize(64 * 1024 + 1, 0);
                vec![s.post(body, INSTANCE).await]
            }
            RequestTooShort => {
                let (s, _) = handshake(main, &self.usable).await;
                let body = s.seal(0, &Request::Info { features: vec![] });
                vec![s.post(body[..24].to_vec(), INSTANCE).await]
            }
            RequestVersion => {
                let (s, _) = handshake(main, &self.usable).await;
                let mut body = s.seal(0, &Request::Info { features: vec![] });
                body[0] = 2;
                vec![s.post(body, INSTANCE).await]
            }
            RequestReplay => {
                let (s, _) = handshake(main, &self.usable).await;
                let first = s.seal(0, &Request::Info { features: vec![] });
                assert_eq!(s.post(first.clone(), INSTANCE).await.status, 200);
                let used_again = s.post(first, INSTANCE).await;
                assert_eq!(s.info(200).await.0.status, 200);
                let too_old = s.info(72).await.0;
                let last = s.info(u64::MAX).await.0;
                // Still inside the window (200 − 127): accepted.
                assert_eq!(s.info(73).await.0.status, 200);
                vec![used_again, too_old, last]
            }
            RequestBadEnvelope => {
                let (s, _) = handshake(main, &self.usable).await;
                let body = s.seal(0, &Request::Info { features: vec![] });
                let mut altered = body.clone();
                let last = altered.len() - 1;
                altered[last] ^= 0x01;
                let a = s.post(altered, INSTANCE).await;
                let b = s.post(body.clone(), "another-client").await;
                let other_keys = Session {
                    keys: SessionKeys {
                        c2s: [7; 32],
                        s2c: [7; 32],
                    },
                    addr: s.addr.clone(),
                    id: s.id.clone(),
                };
                let c = other_keys.info(1).await.0;
                // Nothing of that was acted on: the untouched one still goes through.
                assert_eq!(s.post(body, INSTANCE).await.status, 200);
                vec![a, b, c]
            }
            RequestFull => vec![self.full_pending.info(0).await.0],
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_row_of_the_protocol_doc_holds() {
    let (planned, problems) = plan(&status_rows(DOC));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let ctx = Ctx::new().await;
    let mut failures = Vec::new();
    for (row, sc) in &planned {
        let answers = ctx.run(*sc).await;
        assert!(!answers.is_empty(), "{sc:?} provoked nothing");
        for (i, a) in answers.iter().enumerate() {
            if a.status != row.status || a.code != row.code {
                failures.push(format!(
                    "{} | {} — the doc says {} {:?}; case {i} of {sc:?} got {} {:?}: {}",
                    row.endpoint,
                    row.situation,
                    row.status,
                    row.code,
                    a.status,
                    a.code,
                    String::from_utf8_lossy(&a.body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
