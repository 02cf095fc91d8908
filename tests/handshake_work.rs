//! Issue 13: a failed handshake costs the same whatever the identity id
//! names. An unknown id, a known one with or without an expiry, an expired
//! and a revoked one, all with a wrong secret: the same database statements
//! (one read of the identity row when the instance has not cached the id,
//! none when it has) and byte-identical answers. Compared by the statements
//! sqlx reports inside the handshake, not by a stopwatch.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use floatlm::app::App;
use floatlm_protocol::handshake::ClientHandshake;
use std::sync::{Arc, Mutex};
use testkit::{Kind, TestApp};
use tracing::Instrument;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The span every probed handshake runs in.
const PROBE: &str = "probed_handshake";

/// Records the SQL statements sqlx runs inside a [`PROBE`] span.
struct Statements(Arc<Mutex<Vec<String>>>);

struct Sql(String);

impl tracing::field::Visit for Sql {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if matches!(field.name(), "summary" | "db.statement") {
            self.0.push_str(value.trim());
        }
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

impl<S> Layer<S> for Statements
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let probed = ctx
            .event_scope(event)
            .is_some_and(|mut scope| scope.any(|span| span.name() == PROBE));
        if !probed {
            return;
        }
        let mut sql = Sql(String::new());
        event.record(&mut sql);
        // Setting up a new pool connection is the pool's business, not the
        // handshake's: which probe happens to open one is chance.
        if !sql.0.starts_with("SET ") {
            self.0.lock().unwrap().push(sql.0);
        }
    }
}

/// A handshake with a wrong secret for `id`, answered by the handler
/// itself: the statements it ran and its answer.
async fn probe(
    app: &Arc<App>,
    seen: &Mutex<Vec<String>>,
    id: &str,
) -> (Vec<String>, (u16, Vec<u8>)) {
    seen.lock().unwrap().clear();
    let (_, hello) =
        ClientHandshake::start(id, b"definitely-not-the-secret-0123456789", None).unwrap();
    let answer =
        floatlm::http::protocol::handshake(State(app.admission().clone()), Bytes::from(hello))
            .instrument(tracing::info_span!(PROBE))
            .await
            .unwrap_or_else(|e| e.into_response());
    let status = answer.status().as_u16();
    let body = axum::body::to_bytes(answer.into_body(), 1 << 16)
        .await
        .unwrap()
        .to_vec();
    (std::mem::take(&mut *seen.lock().unwrap()), (status, body))
}

#[tokio::test]
async fn a_failed_handshake_costs_the_same_for_every_identity_id() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    // This thread's subscriber; the test's runtime runs every task on it.
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(Statements(seen.clone())),
    );
    let t = TestApp::new(Kind::Mysql).await;
    let app = t.app.clone();
    let now = chrono::Utc::now();
    let day = chrono::Duration::days(1);
    let create = |name: &'static str, expires| {
        let app = app.clone();
        async move {
            app.access()
                .create_identity(name, expires)
                .await
                .unwrap()
                .1
                .id
        }
    };
    let plain = create("plain", None).await;
    let expiring = create("expiring", Some(now + day)).await;
    let expired = create("expired", Some(now - day)).await;
    let revoked = create("revoked", None).await;
    app.access().revoke_identity(&revoked).await.unwrap();
    let mut unknown = "0123456789abcdef".to_string();
    while [&plain, &expiring, &expired, &revoked].contains(&&unknown) {
        unknown = floatlm::crypto::random_hex(8);
    }
    let ids = [
        ("unknown", &unknown),
        ("known, no expiry", &plain),
        ("known, with an expiry", &expiring),
        ("expired", &expired),
        ("revoked", &revoked),
    ];

    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for (what, id) in ids {
        // Creating an identity empties the identity cache.
        create("cache-flush", None).await;
        cold.push((what, probe(&app, &seen, id).await));
        warm.push((what, probe(&app, &seen, id).await));
    }

    let (statements, answer) = &cold[0].1;
    assert_eq!(answer.0, 401, "{}", String::from_utf8_lossy(&answer.1));
    assert_eq!(
        statements.len(),
        1,
        "a cache miss reads the identity row once: {statements:?}"
    );
    assert!(
        statements[0].contains("FROM identities WHERE id = ?"),
        "{statements:?}"
    );
    for (what, result) in cold.iter().chain(&warm) {
        assert_eq!(result.1, *answer, "{what}: the same answer, byte for byte");
    }
    for (what, result) in &cold {
        assert_eq!(&result.0, statements, "{what}: the same statements");
    }
    for (what, result) in &warm {
        assert!(
            result.0.is_empty(),
            "{what}: a cached id costs no statement: {:?}",
            result.0
        );
    }
}
