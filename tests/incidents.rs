//! No database error text reaches a client: a login, heartbeat, query or
//! logout the database fails is answered a sealed `unavailable` with an
//! incident id, an admin API call a 503 `unavailable` with the id in its
//! body, and the server's log holds the database's words under that id at
//! error level.

use floatlm_protocol::messages::{AuthInfo, ErrorCode, Request, Response};
use std::time::Duration;
use testkit::raw::{Answer, Raw};
use testkit::{wait_for, DemoServer, TestDb};

/// A `serve --demo` on its own MariaDB database, logging JSON lines.
fn demo_on(db: &TestDb) -> DemoServer {
    DemoServer::start_on(Some(db), &["--log-format", "json"], &[])
}

async fn exec(db: &TestDb, sql: &str) {
    let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
    sqlx::query(sql).execute(&pool).await.unwrap();
    pool.close().await;
}

fn login(rid: &str) -> Request {
    Request::Login {
        feature: "demo".into(),
        request_id: rid.into(),
        auth: AuthInfo::default(),
    }
}

/// The incident id of an `unavailable` message; panics, saying why, when
/// the message is anything else or shows the database's words.
fn incident_of(message: &str, db: &TestDb, words: &[&str]) -> String {
    let id = message
        .split("(incident ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no incident id in {message:?}"))
        .to_string();
    assert!(
        id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{message}"
    );
    for w in words.iter().chain([&db.name.as_str()]) {
        assert!(
            !message.contains(w),
            "the answer shows the database's words ({w}): {message}"
        );
    }
    id
}

fn sealed_incident(a: Answer, db: &TestDb, words: &[&str]) -> String {
    match a {
        Answer::Sealed(Response::Error {
            code: ErrorCode::Unavailable,
            message,
            ..
        }) => incident_of(&message, db, words),
        other => panic!("expected a sealed unavailable, got {other:?}"),
    }
}

/// The log's error line of incident `id`; asserts it holds `detail`.
fn logged(server: &DemoServer, id: &str, detail: &str) {
    let log = server.proc.log();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["incident"] == id)
        .unwrap_or_else(|| panic!("incident {id} is not in the log:\n{log}"));
    assert_eq!(line["level"], "ERROR", "{line}");
    let error = line["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(detail),
        "incident {id} lacks {detail:?}: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_reach_clients_as_incidents() {
    let db = TestDb::new().await;
    let server = demo_on(&db);
    let raw = Raw::connect(&server.proc.licensing, &server.identity).await;
    let granted = match raw.call("raw", &login("r1")).await {
        Answer::Sealed(Response::Granted { lease, .. }) => lease,
        other => panic!("first login: {other:?}"),
    };

    // A login the database refuses (a trigger stands in for a column that
    // cannot hold the name, a full disk, a broken table): the database's
    // message names the schema and the table.
    let said = format!("refused by trigger on {}.slots", db.name);
    exec(
        &db,
        &format!(
            "CREATE TRIGGER no_grants BEFORE UPDATE ON slots FOR EACH ROW \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{said}'"
        ),
    )
    .await;
    let id = sealed_incident(
        raw.call("raw", &login("r2")).await,
        &db,
        &["trigger", "slots", "45000"],
    );
    logged(&server, &id, &said);

    // A heartbeat, a logout and a query whose tables are gone.
    exec(&db, "RENAME TABLE slots TO slots_away").await;
    let beat = Request::Heartbeat {
        leases: vec![granted.clone()],
    };
    let id = sealed_incident(raw.call("raw", &beat).await, &db, &["slots"]);
    logged(&server, &id, "slots");
    let logout = Request::Logout {
        lease: granted.clone(),
    };
    let id = sealed_incident(raw.call("raw", &logout).await, &db, &["slots"]);
    logged(&server, &id, "slots");
    // Seat counts are cached for a second: wait for the cache to miss.
    let info = Request::Info { features: vec![] };
    let message = wait_for("a query to fail", Duration::from_secs(10), || async {
        match raw.call("raw", &info).await {
            Answer::Sealed(Response::Error { message, .. }) => Some(message),
            _ => None,
        }
    })
    .await;
    let id = incident_of(&message, &db, &["slots"]);
    logged(&server, &id, "slots");

    // The admin API: a 503 with the incident beside the generic message.
    let r = reqwest::Client::new()
        .get(format!("http://{}/admin/v1/leases", server.proc.admin))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unavailable", "{body}");
    let message = body["message"].as_str().unwrap();
    let id = incident_of(message, &db, &["slots"]);
    assert_eq!(body["incident"], id.as_str(), "{body}");
    logged(&server, &id, "slots");

    // Back in place, the same session is served again.
    exec(&db, "RENAME TABLE slots_away TO slots").await;
    exec(&db, "DROP TRIGGER no_grants").await;
    match raw.call("raw", &logout).await {
        Answer::Sealed(Response::Released { released, .. }) => assert!(released),
        other => panic!("logout after repair: {other:?}"),
    }
}
